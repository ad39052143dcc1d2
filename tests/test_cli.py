"""The ``convrt`` command never shows a traceback: argparse errors, convrt errors, closed pipes.

Each case runs ``python -m convrt.cli`` in a subprocess (what the console script runs), so the
exit status, stderr and the interpreter's final flush are the real ones.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import convrt
from convrt import cli
from convrt.cli_support import usable_cpus

ROOT = Path(__file__).resolve().parents[1]
MODEL = str(ROOT / "sample_models" / "small_vgg.onnx")


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "convrt.cli", *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, **kw)


def _argparse_error(r, command: str, *words):
    """argparse's report: usage lines, then one ``convrt COMMAND: error: ...`` line, status 2."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith(f"usage: convrt {command}".rstrip()), r.stderr
    assert lines[-1].startswith(f"convrt {command}: error:"), r.stderr
    assert all(line.startswith((" ", "usage:")) for line in lines[:-1]), r.stderr
    for w in words:
        assert w in lines[-1], r.stderr
    return lines[-1]


@pytest.mark.parametrize("command", ["run", "bench"])
@pytest.mark.parametrize("flag,value,words", [
    ("--batch", "-3", ["--batch", "positive", "-3"]),
    ("--batch", "0", ["--batch", "positive", "0"]),
    ("--batch", "two", ["--batch", "integer", "'two'"]),
    ("--threads", "-1", ["--threads", "positive", "-1"]),
    ("--threads", "0", ["--threads", "positive", "0"]),
    ("--threads", "64", ["--threads", "64", "CPU"]),
    ("--repeat", "0", ["--repeat", "positive", "0"]),
    ("--repeat", "-1", ["--repeat", "positive", "-1"]),
])
def test_bad_numbers_are_argparse_errors(command, flag, value, words):
    if flag == "--threads" and value == "64" and usable_cpus() >= 64:
        pytest.skip("this machine has 64 usable CPUs")
    _argparse_error(_cli(command, MODEL, flag, value), command, *words)


def test_threads_up_to_the_usable_cpus_are_accepted():
    n = usable_cpus()
    r = _cli("run", MODEL, "--threads", str(n), "--repeat", "1")
    assert r.returncode == 0, r.stderr
    assert "top-5" in r.stdout
    _argparse_error(_cli("run", MODEL, "--threads", str(n + 1)), "run", str(n + 1), str(n))


@pytest.mark.parametrize("command", ["run", "inspect", "bench", "optimize"])
def test_unknown_flag_reports_the_subcommands_usage(command):
    extra = ["-o", "unused.onnx"] if command == "optimize" else []
    r = _cli(command, MODEL, *extra, "--bogus")
    line = _argparse_error(r, command, "unrecognized arguments: --bogus")
    assert r.stderr.startswith(f"usage: convrt {command} [-h]")
    assert line == f"convrt {command}: error: unrecognized arguments: --bogus"


def test_version():
    r = _cli("--version")
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout == f"convrt {convrt.__version__}\n"


def test_convrt_error_is_one_line(tmp_path):
    r = _cli("run", str(tmp_path / "missing.onnx"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("convrt: error: ") and "missing.onnx" in lines[0]


@pytest.mark.parametrize("args", [["run", MODEL], ["inspect", MODEL, "--format", "json"],
                                  ["inspect", MODEL]])
def test_closed_stdout_is_quiet(args):
    """The reader went away before the command wrote: no BrokenPipeError traceback, and no
    "Exception ignored ... BrokenPipeError" from the interpreter's exit flush either."""
    p = subprocess.Popen([sys.executable, "-m", "convrt.cli", *args], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # before the command prints (loading the model takes far longer)
    err = p.stderr.read().decode()
    assert p.wait(timeout=300) == 141, err
    assert err == ""


@pytest.mark.parametrize("args", [["inspect", MODEL, "--format", "json"], ["run", MODEL]])
def test_pipe_into_head(args):
    cmd = " ".join([sys.executable, "-m", "convrt.cli", *args]) + " | head -1"
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300,
                       cwd=ROOT)
    assert r.returncode == 0
    assert r.stderr == "", r.stderr
    assert r.stdout == ("{\n" if "json" in args else f"model: {MODEL}\n")


def test_unexpected_exception_is_one_line_naming_its_type(monkeypatch, capsys):
    def boom(args):
        raise ValueError("something\nconvrt did not expect")

    monkeypatch.setattr(cli, "cmd_inspect", boom)
    monkeypatch.delenv("CONVRT_TRACEBACK", raising=False)
    assert cli.main(["inspect", MODEL]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("convrt: internal error: ValueError: something convrt did not expect")
    assert "CONVRT_TRACEBACK=1" in err
    monkeypatch.setenv("CONVRT_TRACEBACK", "1")  # a developer asks for the traceback
    with pytest.raises(ValueError):
        cli.main(["inspect", MODEL])


def test_usable_cpus_follows_the_affinity_mask():
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no affinity API here")
    assert usable_cpus() == len(os.sched_getaffinity(0))


def test_bf16_fallback_warning_is_one_line():
    """Where bf16 cannot run (forced here), ``--precision bf16`` warns in one line, as errors
    are reported, then runs float32."""
    import os

    r = _cli("run", MODEL, "--precision", "bf16",
             env={**os.environ, "CONVRT_DISABLE_BF16": "1"})
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith("convrt: warning: precision='bf16'"), \
        r.stderr
    assert "running float32" in lines[0] and "top-5" in r.stdout
