"""The `convrt` command: run | inspect | featuremaps | optimize | predict | bench | train.

No traceback reaches the user: argparse reports bad arguments (status 2), every convrt error is
one line on stderr (status 1), and a closed stdout pipe ends the command quietly (see ``main``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

from . import __version__
from .errors import ConvrtError, InputError

# (name, help) of every subcommand, for `convrt --help` and `convrt --version`, which build only
# this top level: the subcommands' own arguments need cli_support, whose imports (numba, onnx,
# the kernels) cost ~1 s.  tests/test_cold_start.py checks this list against build_parser().
COMMANDS = (("run", "run a model on given or random input"),
            ("inspect", "per-layer shapes, parameters and MACs"),
            ("featuremaps", "draw layers' feature maps to a PNG"),
            ("optimize", "write the optimized graph as ONNX"),
            ("predict", "run a model over every row of an .npy file"),
            ("warmup", "compile the kernels for this CPU ahead of time"),
            ("bench", "warm latency and a per-node time profile"),
            ("train", "train a model's weights and export the trained model"))


def _add_opt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--level", default="all", choices=["disable", "basic", "extended", "all"],
                   help="graph optimization level (default: all)")
    p.add_argument("--disable", action="append", default=[], metavar="PASS",
                   help="skip the named pass (repeatable)")


def cmd_run(args) -> int:
    import numpy as np

    from .cli_support import make_feeds, make_session

    t0 = time.perf_counter()
    sess = make_session(args)
    feeds = make_feeds(sess, args.input, args.batch, args=args)
    outs = sess.run(None, feeds)
    first = time.perf_counter() - t0
    first_tier = sess.first_tier
    print(f"model: {args.model}")
    for name, a in feeds.items():
        print(f"input  {name}: {list(a.shape)} {a.dtype}")
    for arg, y in zip(sess.get_outputs(), outs):
        print(f"output {arg.name}: {list(y.shape)} {y.dtype}")
        if y.ndim == 2 and y.shape[1] > 1 and y.dtype.kind == "f":
            for i, row in enumerate(y[:4]):
                top = np.argsort(-row, kind="stable")[:5]
                print(f"  sample {i} top-5: " + ", ".join(f"{c} ({row[c]:.4f})" for c in top))
    print(f"load + first run: {first * 1e3:.1f} ms" + (
        " (numpy kernels: numba's cache was empty)" if first_tier else ""), flush=True)
    if first_tier and args.repeat:
        print("convrt: waiting for numba to compile the kernels before timing them (tens of "
              "seconds, once: they are cached on disk)", file=sys.stderr, flush=True)
        t = time.perf_counter()
        sess.wait_compiled()
        print(f"numba kernels compiled in the background: ready {time.perf_counter() - t:.1f} s"
              " later", flush=True)
    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t)
    if times:
        print(f"latency over {len(times)} runs: median {np.median(times) * 1e3:.2f} ms, "
              f"min {np.min(times) * 1e3:.2f} ms")
    return 0


def cmd_inspect(args) -> int:
    from . import compiler, inspect
    from .api import level_name
    from .cli_support import make_feeds, make_session

    if args.activations:
        if args.format not in ("table", "json"):
            raise InputError("--activations prints --format table or json")
        sess = make_session(args)
        rows = inspect.activation_stats(sess, make_feeds(sess, [args.activations], 1, args=args))
        return _emit(inspect.render_activations(rows, args.format), args.output)
    graph = compiler.load(args.model)
    before = len(graph.nodes)
    report = None
    if args.optimized:
        report = compiler.optimize(graph, level_name(args.level), tuple(args.disable))
    fmt = args.format
    if fmt in ("dot", "svg"):
        text = inspect.render_dot(graph) if fmt == "dot" else inspect.render_svg(graph)
    else:
        s = inspect.summarize(graph)
        text = inspect.render_json(s) if fmt == "json" else inspect.render_table(s)
        if report is not None and fmt == "table":
            text += "\n\n" + inspect.render_report(report, before, len(graph.nodes))
    return _emit(text, args.output)


def _emit(text: str, output) -> int:
    """``text`` into the file ``output`` (saying so), or on stdout."""
    if output:
        Path(output).write_text(text + "\n")
        print(f"wrote {output}")
    else:
        print(text)
    return 0


def cmd_featuremaps(args) -> int:
    from . import viz
    from .cli_support import make_feeds, make_session
    from .images import is_image, load_image

    viz._matplotlib()  # the install hint before minutes of compiling
    sess = make_session(args)
    viz.check_layers(sess, args.layer)
    feeds = make_feeds(sess, [args.input], 1, args=args)
    image = None
    path = args.input.partition("=")[2] or args.input
    if is_image(path):  # show the picture itself, cropped as the model saw it
        x = next(iter(feeds.values()))
        c = x.shape[1] if args.layout == "NCHW" else x.shape[3]
        hw = x.shape[2:] if args.layout == "NCHW" else x.shape[1:3]
        image = load_image(path, tuple(hw), c)
        image = image[:, :, 0] if c == 1 else image
    viz.save_feature_maps(sess, feeds, args.layer, args.output, filters=args.filters,
                          max_channels=args.max_channels, image=image)
    print(f"wrote {args.output}")
    return 0


def cmd_optimize(args) -> int:
    from . import compiler, onnx_io
    from .api import level_name

    graph = compiler.load(args.model)
    before = len(graph.nodes)
    report = compiler.optimize(graph, level_name(args.level), tuple(args.disable))
    try:
        onnx_io.save(graph, args.output)
    except OSError as e:
        raise InputError(f"cannot write {args.output}: {e.strerror}") from None
    from . import inspect

    print(inspect.render_report(report, before, len(graph.nodes)))
    print(f"wrote {args.output}")
    return 0


def cmd_predict(args) -> int:
    from .predict import run  # lazily: dask and ray are optional extras

    return run(args)


def _top_parser():
    p = argparse.ArgumentParser(prog="convrt", description="ONNX CNN compiler and runtime.")
    p.add_argument("--version", action="version", version=f"convrt {__version__}")
    return p, p.add_subparsers(dest="command", required=True, metavar="COMMAND")


def light_parser() -> argparse.ArgumentParser:
    """The top level only (every command named, none with its arguments): enough for
    ``--version``, ``--help`` and a mistyped command, without importing the runtime."""
    p, sub = _top_parser()
    for name, text in COMMANDS:
        sub.add_parser(name, help=text)
    p.subcommands = sub.choices
    return p


def build_parser() -> argparse.ArgumentParser:
    from .cli_support import (IMAGE_HELP, add_image_args, add_precision_arg, positive_int,
                              thread_count)
    from .warmup import add_parser as add_warmup

    p, sub = _top_parser()

    r = sub.add_parser("run", help="run a model on given or random input",
                       description="Run MODEL once (plus --repeat timed runs); print output "
                       "shapes, top-5 classes of a classifier and the latency.")
    r.add_argument("model", help="path to an .onnx file")
    r.add_argument("--input", action="append", default=[], metavar="NAME=FILE",
                   help="feed NAME from FILE (others get random data); " + IMAGE_HELP)
    r.add_argument("--repeat", type=positive_int, default=10,
                   help="timed runs after the first (10)")
    r.add_argument("--batch", type=positive_int, default=1, help="value for symbolic dims (1)")
    r.add_argument("--threads", type=thread_count, default=None,
                   help="intra-op threads, 1 to the CPUs this process may use (default: all)")
    add_image_args(r)
    add_precision_arg(r)
    _add_opt_args(r)
    r.set_defaults(fn=cmd_run)

    i = sub.add_parser("inspect", help="per-layer shapes, parameters and MACs",
                       description="Print a per-node table (shapes, parameters, MACs; "
                       "FLOPs = 2 x MACs) and totals, or a picture of the graph.")
    i.add_argument("model")
    i.add_argument("--optimized", action="store_true", help="inspect after optimization and "
                   "print the pass report")
    i.add_argument("--format", default="table", choices=["table", "json", "dot", "svg"])
    i.add_argument("-o", "--output", help="write to FILE instead of stdout")
    i.add_argument("--activations", metavar="INPUT", default=None,
                   help="run the model on INPUT and print per-value statistics (mean, std, "
                   "min, max, %% zeros, NaN/Inf, time) of every node output (--format table or "
                   "json); " + IMAGE_HELP.replace("FILE", "INPUT"))
    add_image_args(i)
    _add_opt_args(i)
    i.set_defaults(fn=cmd_inspect)

    f = sub.add_parser("featuremaps", help="draw layers' feature maps to a PNG",
                       description="Run MODEL on INPUT and draw each --layer's channels as a "
                       "grid (each channel normalized to its own min..max), the input beside "
                       "them. Needs matplotlib: pip install \"convrt[viz]\".")
    f.add_argument("model")
    f.add_argument("--input", required=True, metavar="[NAME=]FILE", help=IMAGE_HELP)
    f.add_argument("--layer", action="append", default=[], required=True, metavar="NAME",
                   help="a 4-D value to draw (repeatable; convrt inspect --activations lists "
                   "the values)")
    f.add_argument("-o", "--output", required=True, help="output picture (.png)")
    f.add_argument("--filters", action="store_true",
                   help="also draw the first convolution's kernels")
    f.add_argument("--max-channels", type=positive_int, default=64,
                   help="channels drawn per layer (the first ones; 64)")
    add_image_args(f)
    _add_opt_args(f)
    f.set_defaults(fn=cmd_featuremaps)

    o = sub.add_parser("optimize", help="write the optimized graph as ONNX",
                       description="Optimize MODEL and write it as valid ONNX (fused nodes as "
                       "model-local functions).")
    o.add_argument("model")
    o.add_argument("-o", "--output", required=True, help="output .onnx path")
    _add_opt_args(o)
    o.set_defaults(fn=cmd_optimize)

    pr = sub.add_parser("predict", help="run a model over every row of an .npy file",
                        description="Run MODEL over INPUT (.npy, first axis = batch, read "
                        "memory-mapped) in batches and write the outputs to OUT.npy, here or "
                        "on a dask or Ray cluster (local, --workers processes x 1 thread, unless "
                        "--address is given).")
    pr.add_argument("model", help="path to an .onnx file")
    pr.add_argument("input", help=".npy file of inputs")
    pr.add_argument("-o", "--output", required=True, help="output .npy path")
    pr.add_argument("--batch-size", type=positive_int, default=64, help="rows per batch (64)")
    pr.add_argument("--engine", default="local", choices=["local", "dask", "ray"])
    pr.add_argument("--workers", type=positive_int, default=None,
                    help="processes of the local cluster (default: the usable CPUs)")
    pr.add_argument("--address", default=None, help="a running dask scheduler or Ray cluster")
    pr.add_argument("--threads", type=thread_count, default=None,
                    help="kernel threads per session (local: all CPUs; dask/ray: 1)")
    pr.add_argument("--output-name", default=None, metavar="NAME",
                    help="the model output to write (default: the first)")
    pr.set_defaults(fn=cmd_predict)
    add_warmup(sub)

    try:
        from .bench import add_parser as add_bench
        add_bench(sub)
    except ImportError:
        pass
    try:
        from .train.cli import add_parser as add_train
        add_train(sub)
    except ImportError:
        pass
    p.subcommands = sub.choices  # name -> subparser: main reports stray arguments with its usage
    return p


def _silence_stdout() -> None:
    """Point stdout at devnull: the reader of our pipe has gone, and the interpreter's final
    flush of what is still buffered must not fail again (Python's documented recipe)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a descriptor (in-process)
        pass


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"convrt: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the subcommand; returns the exit status.

    Bad arguments: argparse's usage and one error line, status 2.  A convrt error: one line,
    status 1.  stdout closed early (``| head``): nothing on stderr, status 141 (128 + SIGPIPE,
    what a shell reports for a command killed by the signal).  Any other exception is a bug in
    convrt: one line naming its type, status 1; ``CONVRT_TRACEBACK=1`` lets the traceback out.
    """
    words = sys.argv[1:] if argv is None else argv
    command = next((w for w in words if not w.startswith("-")), None)
    parser = build_parser() if command in dict(COMMANDS) else light_parser()
    # parse_known_args: with parse_args a stray option after the subcommand is reported by the
    # top-level parser, whose usage ("convrt [-h] COMMAND ...") does not help; report it with
    # the subcommand's usage instead.
    args, extra = parser.parse_known_args(argv)
    if extra:
        sub = parser.subcommands.get(args.command, parser)
        sub.error(f"unrecognized arguments: {' '.join(extra)}")
    # a warning is one line, as errors are, not Python's file:line plus the source line
    warnings.formatwarning = _one_line_warning
    try:
        status = args.fn(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit flush
        return status
    except BrokenPipeError:
        _silence_stdout()
        return 141
    except ConvrtError as e:
        print(f"convrt: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        if os.environ.get("CONVRT_TRACEBACK"):
            raise
        msg = " ".join(str(e).split())[:500]
        print(f"convrt: internal error: {type(e).__name__}: {msg} (a bug in convrt; rerun with "
              "CONVRT_TRACEBACK=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
