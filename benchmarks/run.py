"""convrt vs onnxruntime and OpenVINO benchmark suite.

    python benchmarks/run.py [--models vgg16_b1 ...] [--runtimes convrt ort ov_f32 ov_default]
                             [--repeat N] [--out results.json] [--threads 2] [--pause 2]
                             [--rounds 8] [--no-empty-cache] [--markdown FILE]

Runtimes (``--runtimes``, all four by default): ``convrt``; ``ort`` = onnxruntime, all graph
optimizations, the output oracle; ``ov_f32`` = OpenVINO's CPU plugin with the LATENCY hint and
float32 inference pinned, a second float32 peer; ``ov_default`` = the same left at OpenVINO's
default precision (bfloat16 on a CPU with AVX512_BF16/AMX), what its users get out of the box.
OpenVINO is a benchmark-only dependency (``pip install -e ".[bench]"``); when it does not import,
one printed line says so and its two runtimes are skipped.

Every measurement runs in its own fresh subprocess (benchmarks/_worker.py), one runtime at a
time with a pause between them (idle worker threads of one runtime must not steal the cores of
another).  For the warm latency all runtimes' processes stay up and take turns: --rounds
rounds of --repeat runs each (``interleaved``), every run of a runtime pooled for its median.  On
this shared machine the background load drifts within seconds; alternating closely spreads a
slow spell over every side of a ratio instead of one.  Per model it reports, for each runtime,
and as ratios convrt/ort, convrt/OV f32, convrt/best float32 peer (the better of ort and OV f32:
the lower time or RSS, the higher rate) and convrt/OV default:

* warm latency: median and min of all rounds' runs after warm-up, throughput (images/s), achieved
  GFLOP/s and % of this machine's float32 matmul peak (numpy sgemm 2048^3, own subprocess);
* start-up, the whole process from its spawn to the first output (imports, load, plan, first
  run) for every model: convrt with a warm numba cache (a priming process runs first) and with
  an empty one (a temporary NUMBA_CACHE_DIR: every kernel compiled; --no-empty-cache skips it).
  On the empty cache the first output comes from the first tier's numpy kernels
  (convrt/runtime/tiers.py); "compiled (empty cache)" is spawn -> compiled kernels in use.
  The peers keep no kernel cache, so their one start-up stands against both of convrt's;
* peak RSS of the process;
* each output's max abs error vs onnxruntime's: convrt and OV f32 must be within
  1e-4 * max|y| (PASS/FAIL); OV default (bfloat16) is reported with its error only.

Results go to --out (default benchmarks/results/latest.json); --markdown writes the table too.
The exit status is 1 when convrt's output fails its check (or convrt did not run to the check).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "sample_models"))

# name -> (builder name, batch)
MODELS = {
    "vgg16_b1": ("vgg16", 1),
    "vgg16_b8": ("vgg16", 8),
    "small_vgg_b64": ("small_vgg_32", 64),
    "resnet18_b1": ("resnet18", 1),
    "mobilenet_v2_b1": ("mobilenet_v2", 1),
    # issue #21's modern families, 224x224; not in the default run (they add minutes)
    "efficientnet_b0_b1": ("efficientnet_b0", 1),
    "mobilenet_v3_large_b1": ("mobilenet_v3_large", 1),
    "resnet50_b1": ("resnet50", 1),
    "convnext_tiny_b1": ("convnext_tiny", 1),
    "yolov8n_320_b1": ("yolov8n", 1),  # the builder's default: 320x320, static batch 1
}
DEFAULT_MODELS = ["vgg16_b1", "vgg16_b8", "small_vgg_b64", "resnet18_b1", "mobilenet_v2_b1"]
TOL = 1e-4  # max abs error <= TOL * max|y_ort|

# every runtime _worker.py can time, in the table's column order
RUNTIMES = ("convrt", "ort", "ov_f32", "ov_default", "convrt_bf16")
LABELS = {"convrt": "convrt", "ort": "onnxruntime", "ov_f32": "OpenVINO f32",
          "ov_default": "OpenVINO default", "convrt_bf16": "convrt bf16"}
SHORT = {"convrt": "convrt", "ort": "ort", "ov_f32": "OV f32", "ov_default": "OV def",
         "convrt_bf16": "cv bf16"}
DEFAULT_RUNTIMES = ("convrt", "ort", "ov_f32", "ov_default")  # convrt_bf16 is opt-in
# the order the processes start and take turns in: onnxruntime first and convrt last as before,
# so a run without OpenVINO times exactly as it did
START_ORDER = ("ort", "ov_f32", "ov_default", "convrt", "convrt_bf16")
# outputs compared with onnxruntime's; True = held to TOL (float32), False = error reported only
CHECKED = {"convrt": True, "ov_f32": True, "ov_default": False, "convrt_bf16": False}
# the ratio columns: (header, name in the JSON/Markdown, the peer or peers convrt is divided by,
# and the convrt runtime divided: float32 unless named); "best f32" is the better of the two
# float32 peers per metric, the bar convrt has to clear; convrt bf16 / OV default (bfloat16
# here) is issue #20's bf16 bar
RATIOS = (("/ort", "convrt/ort", ("ort",)),
          ("/OV f32", "convrt/OV f32", ("ov_f32",)),
          ("/best32", "convrt/best f32", ("ort", "ov_f32")),
          ("/OV def", "convrt/OV default", ("ov_default",)),
          ("bf/OVdef", "convrt bf16/OV default", ("ov_default",), "convrt_bf16"))


def _num(ratio) -> str:
    """The runtime a ratio column divides (its fourth field, else float32 convrt)."""
    return ratio[3] if len(ratio) > 3 else "convrt"
HIGHER_IS_BETTER = {"images_per_s", "gflops", "pct_peak"}


def machine() -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            key, _, val = line.partition(":")
            key, val = key.strip(), val.strip()
            if key == "Model name":
                info["cpu"] = val
            elif key == "CPU(s)":
                info["cores"] = int(val)
            elif key == "Thread(s) per core":
                info["threads_per_core"] = int(val)
        flags = next((ln for ln in out.splitlines() if ln.startswith("Flags")), "")
        info["avx512f"] = " avx512f" in flags
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    try:
        mem = Path("/proc/meminfo").read_text().split("\n")[0].split()
        info["mem_gib"] = round(int(mem[1]) / 2 ** 20, 1)
    except (OSError, IndexError, ValueError):
        pass
    return info


def worker(spec: dict, env: dict | None = None, timeout: float = 1800) -> dict:
    """Run one measurement in a fresh process; returns its JSON result (or {"error": ...})."""
    with tempfile.TemporaryDirectory(prefix="convrt-bench-") as tmp:
        spec = dict(spec, result=os.path.join(tmp, "result.json"))
        path = os.path.join(tmp, "spec.json")
        spec["t_spawn"] = time.time()  # cold start counts from here: process start onwards
        Path(path).write_text(json.dumps(spec))
        proc = subprocess.run([sys.executable, str(HERE / "_worker.py"), path],
                              env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not os.path.exists(spec["result"]):
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            return {"error": " | ".join(tail) or f"exit status {proc.returncode}"}
        return json.loads(Path(spec["result"]).read_text())


SWITCH_PAUSE = 0.3  # s between handing the cores from one runtime to the other (idle spin)


def _failed(proc, what: str) -> dict:
    """The error of a serve-mode worker that died or never said ``ready``: its stderr's tail."""
    proc.kill()
    proc.wait()
    err = proc.stderr.read().strip().splitlines()[-5:]
    return {"error": " | ".join(err) or what}


def interleaved(specs: dict, env: dict, rounds: int, per_round: int, pause: float,
                timeout: float = 1800) -> dict:
    """Every runtime of ``specs`` at once, each in its own process (``_worker.py`` in serve
    mode), timed in alternation: ``rounds`` rounds of ``per_round`` runs each, the order
    reversed every other round, with SWITCH_PAUSE between (the idle ones are blocked on their
    pipes).  Drift in the machine's background load then falls on every side of a ratio alike.
    The processes start one after the other, so each cold start is measured on an otherwise idle
    machine.  A worker that fails (say, a runtime that cannot load the model) gets its error and
    the others go on."""
    procs, out, tmps = {}, {}, []
    try:
        for kind, spec in specs.items():
            tmp = tempfile.TemporaryDirectory(prefix="convrt-bench-")
            tmps.append(tmp)
            spec = dict(spec, result=os.path.join(tmp.name, "result.json"), serve=True,
                        repeat=1, t_spawn=time.time())
            path = os.path.join(tmp.name, "spec.json")
            Path(path).write_text(json.dumps(spec))
            proc = subprocess.Popen([sys.executable, str(HERE / "_worker.py"), path], env=env,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            if proc.stdout.readline().strip() != "ready":
                out[kind] = _failed(proc, "worker did not start")
                continue
            procs[kind] = (proc, spec)
            time.sleep(pause)
        times = {kind: [] for kind in procs}
        order = list(procs)
        for r in range(rounds):
            for kind in (order if r % 2 == 0 else order[::-1]):
                if kind in out:  # died in an earlier round
                    continue
                proc = procs[kind][0]
                try:
                    proc.stdin.write(f"run {per_round}\n")
                    proc.stdin.flush()
                    line = proc.stdout.readline()
                except OSError:
                    line = ""
                if not line:
                    out[kind] = _failed(proc, "worker died while timing")
                    continue
                times[kind].append(json.loads(line))
                time.sleep(SWITCH_PAUSE)
        for kind, (proc, spec) in procs.items():
            if kind in out:
                continue
            proc.stdin.write("quit\n")
            proc.stdin.flush()
            _, err = proc.communicate(timeout=timeout)
            if proc.returncode != 0 or not os.path.exists(spec["result"]):
                out[kind] = {"error": " | ".join(err.strip().splitlines()[-5:])}
                continue
            res = json.loads(Path(spec["result"]).read_text())
            res["times_s"] = [t for batch in times[kind] for t in batch]
            res["round_medians_ms"] = [float(np.median(b)) * 1e3 for b in times[kind]]
            out[kind] = res
        return {kind: out[kind] for kind in specs}
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
        for tmp in tmps:
            tmp.cleanup()


def summarize(res: dict, batch: int, flops: int, peak: float) -> dict:
    ts = res.get("times_s") or []
    if not ts:
        return res
    med, mn = float(np.median(ts)), float(np.min(ts))
    res.update(median_ms=med * 1e3, min_ms=mn * 1e3, images_per_s=batch / med)
    if flops:
        res["gflops"] = flops / med / 1e9
        if peak:
            res["pct_peak"] = 100 * res["gflops"] / peak
    return res


def check(y, ref, held: bool) -> dict:
    """Max abs error of ``y`` vs onnxruntime's ``ref``; ``ok`` says whether it is within
    TOL * max|ref| when the runtime is ``held`` to float32 accuracy, else None (a bfloat16
    runtime is reported with its error, not failed)."""
    err = float(np.max(np.abs(y.astype(np.float64) - ref))) if y.shape == ref.shape \
        else float("inf")
    scale = float(np.max(np.abs(ref)))
    return {"max_abs_err": err, "max_abs_y": scale, "rel": err / scale if scale else err,
            "tol": TOL if held else None, "ok": bool(err <= TOL * scale) if held else None}


def bench_model(name: str, args, runtimes: list, peak: float, log) -> dict:
    from builders import cached_model

    builder, batch = MODELS[name]
    path = str(cached_model(builder))
    common = {"model": path, "batch": batch, "threads": args.threads, "seed": 0,
              "warmup": args.warmup}
    env = dict(os.environ)
    out = {"model": builder, "batch": batch, "path": path}
    with tempfile.TemporaryDirectory(prefix="convrt-bench-out-") as tmp:
        npy = {k: os.path.join(tmp, f"{k}.npy") for k in runtimes}
        for kind in ("convrt", "convrt_bf16"):
            if kind in runtimes:
                log(f"[{name}] priming {LABELS[kind]}'s numba cache")
                prime = worker(dict(common, kind=kind, repeat=0), env)
                if "error" in prime:
                    out["prime_error"] = prime["error"]
                time.sleep(args.pause)
        kinds = [k for k in START_ORDER if k in runtimes]
        log(f"[{name}] {', '.join(LABELS[k] for k in kinds)}: {args.rounds} alternating rounds "
            f"of {args.repeat} runs")
        res = interleaved({k: dict(common, kind=k, out_npy=npy[k]) for k in kinds},
                          env, args.rounds, args.repeat, args.pause)
        out.update((k, res[k]) for k in RUNTIMES if k in res)
        if "error" not in res.get("ort", {"error": "not run"}):
            ref = np.load(npy["ort"])
            out["checks"] = {k: check(np.load(npy[k]), ref, held)
                             for k, held in CHECKED.items() if k in res and "error" not in res[k]}
    if "convrt" in runtimes and not args.no_empty_cache:
        time.sleep(args.pause)
        log(f"[{name}] convrt start-up with an empty numba cache")
        cache = tempfile.mkdtemp(prefix="convrt-empty-numba-")
        try:
            cold = worker(dict(common, kind="convrt", repeat=0),
                          dict(env, NUMBA_CACHE_DIR=cache))
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        out["convrt_empty_cache"] = cold
    cv = out.get("convrt") or out.get("convrt_bf16") or {}
    flops = cv.get("flops", 0) if "error" not in cv else 0
    out["gflop"] = flops / 1e9
    for k in RUNTIMES:
        if k in out:
            summarize(out[k], batch, flops, peak)
    time.sleep(args.pause)
    return out


def _ratio(a, b):
    return a / b if a is not None and b else None


def _best(key: str, values: list):
    """The better of the peers' values for ``key`` (None where none has one)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return max(vals) if key in HIGHER_IS_BETTER else min(vals)


def columns(results: dict) -> tuple[list, list]:
    """The runtimes that ran (value columns) and the ratios that can be formed from them."""
    ran = [k for k in RUNTIMES if k in results.get("runtimes", ("convrt", "ort"))]
    ratios = [r for r in RATIOS if _num(r) in ran and all(p in ran for p in r[2])]
    return ran, ratios


def rows_of(results: dict) -> list[tuple]:
    """(model, metric, unit, {runtime: value}, {ratio header: value}) rows for the table; an
    error row has the message as its unit and no values."""
    ran, ratios = columns(results)
    rows = []
    for name, r in results["models"].items():
        metrics = [("median_ms", "latency median", "ms"), ("min_ms", "latency min", "ms"),
                   ("images_per_s", "throughput", "img/s"), ("gflops", "GFLOP/s", ""),
                   ("pct_peak", "% of sgemm peak", "%"),
                   ("cold_s", "start-up (warm cache)", "s"), ("peak_rss_mb", "peak RSS", "MB")]
        e = r.get("convrt_empty_cache", {})
        if e:
            metrics.append(("cold_s", "start-up (empty cache)", "s"))
            if e.get("compiled_s") is not None:  # the first output came from the first tier
                metrics.append(("compiled_s", "compiled (empty cache)", "s"))
        for key, label, unit in metrics:
            vals = {k: r.get(k, {}).get(key) for k in ran}
            if label == "start-up (empty cache)":  # the peers keep no cache: their one start-up
                vals["convrt"] = e.get("cold_s")
            if label == "compiled (empty cache)":  # spawn -> compiled kernels in use: convrt's
                vals = {"convrt": e.get("compiled_s")}
            rats = {r[0]: _ratio(vals.get(_num(r)), _best(key, [vals.get(p) for p in r[2]]))
                    for r in ratios}
            rows.append((name, label, unit, vals, rats))
        for side in ran + ["convrt_empty_cache"]:
            if "error" in r.get(side, {}):
                rows.append((name, f"ERROR {side}", r[side]["error"][:160], {}, {}))
    return rows


def _fmt(v, unit=""):
    if v is None:
        return "-"
    if unit in ("ms", "MB", "img/s", "") and abs(v) >= 100:
        return f"{v:.0f}"
    if unit == "s":
        return f"{v:.2f}"
    return f"{v:.1f}"


def _rat(v):
    return "-" if v is None else f"{v:.2f}"


def check_lines(results: dict) -> list[tuple]:
    """(model, runtime label, check dict or None) for every runtime compared with onnxruntime;
    the label names the precision OpenVINO reports where the runtime's name does not say it."""
    ran, _ = columns(results)
    out = []
    for name, r in results["models"].items():
        checks = r.get("checks", {})
        for k in CHECKED:
            if k in ran:
                prec = r.get(k, {}).get("precision")  # what OpenVINO says it runs in
                note = f" ({prec})" if prec and prec not in LABELS[k] else ""
                out.append((name, LABELS[k] + note, checks.get(k)))
    return out


def _check_text(c: dict | None) -> str:
    if c is None:
        return "not run"
    head = f"max abs err {c['max_abs_err']:.3g} (max|y| {c['max_abs_y']:.3g}, rel {c['rel']:.2g})"
    if c["ok"] is None:
        return head + " reported only (not float32)"
    return head + f" {'PASS' if c['ok'] else 'FAIL'} (tol {c['tol']:g} x max|y|)"


def _skipped(results: dict) -> list[str]:
    """One line per reason for the runtimes left out (both OpenVINO ones share theirs)."""
    why = {}
    for k, w in results.get("skipped", {}).items():
        why.setdefault(w, []).append(k)
    return [f"{', '.join(ks)} ({w})" for w, ks in why.items()]


def _versions(results: dict) -> str:
    v = results.get("versions", {})
    parts = [f"onnxruntime {v['ort']}" if v.get("ort") else "",
             f"OpenVINO {v['openvino'].split('-')[0]}" if v.get("openvino") else ""]
    return ", ".join(p for p in parts if p) or "no peer ran"


def render_text(results: dict) -> str:
    m = results["machine"]
    ran, ratios = columns(results)
    peers = " and ".join(dict.fromkeys(LABELS[k].split()[0] for k in ran
                                       if not k.startswith("convrt")))
    lines = [f"convrt vs {peers or 'nothing'}  {results['date']}  {m.get('cpu')}, "
             f"{m.get('cores')} cores, "
             f"{results['threads']} threads each, median of {results.get('rounds', 1)} x "
             f"{results['repeat']} runs; {_versions(results)}",
             f"float32 sgemm 2048^3 peak ({results['threads']} threads): "
             f"{results['peak_gflops']:.1f} GFLOP/s", ""]
    lines += [f"skipped: {line}" for line in _skipped(results)] + [""] * bool(_skipped(results))
    hdr = (f"{'model':<16} {'metric':<28}" + "".join(f" {SHORT[k]:>9}" for k in ran)
           + "".join(f" {h:>8}" for h, *_ in ratios))
    lines += [hdr, "-" * len(hdr)]
    last = None
    for name, label, unit, vals, rats in rows_of(results):
        if label.startswith("ERROR"):
            lines.append(f"{name:<16} {label:<28} {unit}")
            continue
        lab = label + (" " + unit if unit and unit != "%" else "")
        lines.append(f"{name if name != last else '':<16} {lab:<28}"
                     + "".join(f" {_fmt(vals.get(k), unit):>9}" for k in ran)
                     + "".join(f" {_rat(rats.get(h)):>8}" for h, *_ in ratios))
        last = name
    prec = next((r["ov_default"].get("precision") for r in results["models"].values()
                 if r.get("ov_default", {}).get("precision")), None)
    notes = {"/best32": "best32 = the better of ort and OV f32 (lower time or RSS, higher rate)",
             "/OV def": "OV def = OpenVINO's default precision" + (f" ({prec} here)" if prec
                                                                    else "")}
    if ratios:
        lines.append("; ".join(["ratios = convrt / the peer"]
                               + [notes[h] for h, *_ in ratios if h in notes]))
    lines.append("start-up = the whole process, spawn -> first output" + (
        "; the peers keep no kernel cache, so their empty-cache start-up is their one start-up"
        if any("convrt_empty_cache" in r for r in results["models"].values()) else ""))
    lines.append("")
    last = None
    for name, label, c in check_lines(results):
        lines.append(f"{name if name != last else '':<16} {label + ' vs onnxruntime:':<40} "
                     f"{_check_text(c)}")
        last = name
    lines.append("")
    for name, r in results["models"].items():
        spreads = round_ratios(r)
        if spreads:
            lines.append(f"{name:<16} latency ratio per round (median of each), min .. max: "
                         + ", ".join(f"{_spread_label(p)[6:]} {min(v):.2f} .. {max(v):.2f}"
                                     for p, v in spreads.items()))
    return "\n".join(lines)


def round_ratios(r: dict) -> dict:
    """convrt / each peer of each round's medians (the same round of every runtime ran within
    a few seconds): how much a ratio moves with the load.  {peer: [ratio per round]}; convrt
    bf16 / OpenVINO default under the key "bf16/ov_default"."""
    out = {}
    for num, peers in (("convrt", ("ort", "ov_f32", "ov_default")),
                       ("convrt_bf16", ("ov_default",))):
        a = r.get(num, {}).get("round_medians_ms") or []
        for peer in peers:
            b = r.get(peer, {}).get("round_medians_ms") or []
            spread = [x / y for x, y in zip(a, b) if y]
            if spread:
                out[peer if num == "convrt" else "bf16/" + peer] = spread
    return out


def _spread_label(key: str) -> str:
    """A ``round_ratios`` key as "convrt/<peer>" or "convrt bf16/<peer>"."""
    if key.startswith("bf16/"):
        return f"convrt bf16/{LABELS[key[5:]]}"
    return f"convrt/{LABELS[key]}"


def render_markdown(results: dict) -> str:
    m = results["machine"]
    ran, ratios = columns(results)
    peers = ", ".join(LABELS[k] for k in ran if not k.startswith("convrt"))
    out = [f"# convrt vs {peers or 'nothing'}", "",
           f"Measured {results['date']} on {m.get('cpu')}, {m.get('cores')} cores "
           f"({m.get('mem_gib', '?')} GiB), Python {m.get('python')}, {_versions(results)}; "
           f"{results['threads']} threads for every runtime (onnxruntime: all optimizations"
           + ("; OpenVINO: CPU plugin, LATENCY hint, f32 = INFERENCE_PRECISION_HINT f32, "
              "default = its own choice" if any(k.startswith("ov_") for k in ran) else "")
           + f"); medians of {results.get('rounds', 1)} x {results['repeat']} warm "
           f"runs, each runtime in its own fresh process, all of them taking turns "
           f"{results.get('rounds', 1)} times.  float32 sgemm 2048³ peak: "
           f"{results['peak_gflops']:.1f} GFLOP/s.  Ratios = convrt / the peer (lower is better "
           f"for times and memory)"
           + ("; best f32 = the better of onnxruntime and OpenVINO f32 per metric"
              if any(n == "convrt/best f32" for _, n, *_ in ratios) else "")
           + ".  Start-up = process spawn to first output (imports, load, first run)"
           + ("; the peers keep no kernel cache, so the empty-cache row repeats their one "
              "start-up" if any("convrt_empty_cache" in r for r in results["models"].values())
              else "") + ".  Reproduce: `python benchmarks/run.py`.", ""]
    out += [f"Skipped: {line}." for line in _skipped(results)] + [""] * bool(_skipped(results))
    out += ["| model | metric | " + " | ".join(LABELS[k] for k in ran)
            + "".join(f" | {n}" for _, n, *_ in ratios) + " |",
            "|---|---|" + "---:|" * (len(ran) + len(ratios))]
    for name, label, unit, vals, rats in rows_of(results):
        if label.startswith("ERROR"):
            out.append(f"| {name} | {label} | {unit} |" + " |" * (len(ran) + len(ratios) - 1))
            continue
        lab = label + (f" ({unit})" if unit and unit != "%" else "")
        out.append(f"| {name} | {lab} | " + " | ".join(_fmt(vals.get(k), unit) for k in ran)
                   + "".join(f" | {_rat(rats.get(h))}" for h, *_ in ratios) + " |")
    out += ["", "| model | runtime | max abs error vs onnxruntime | max abs y | "
            "within 1e-4·max abs y |", "|---|---|---:|---:|---|"]
    for name, label, c in check_lines(results):
        if c:
            verdict = "not held to it" if c["ok"] is None else ("yes" if c["ok"] else "NO")
            out.append(f"| {name} | {label} | {c['max_abs_err']:.3g} | {c['max_abs_y']:.3g} | "
                       f"{verdict} |")
    out += ["", "Latency ratio of each round's medians (how far the load moved it within this "
            "run):", "", "| model | ratio | min | max | per round |", "|---|---|---:|---:|---|"]
    for name, r in results["models"].items():
        for peer, spread in round_ratios(r).items():
            out.append(f"| {name} | {_spread_label(peer)} | {min(spread):.2f} | "
                       f"{max(spread):.2f} | {' '.join(f'{v:.2f}' for v in spread)} |")
    return "\n".join(out) + "\n"


def openvino_status() -> tuple[str | None, str]:
    """(version, "") when openvino imports in a fresh interpreter (as the workers would import
    it), else (None, why).  Asked in a subprocess so that this parent process, which spawns and
    times the others, never loads OpenVINO's libraries or thread pools."""
    try:
        proc = subprocess.run([sys.executable, "-c",
                               "import openvino; print(openvino.get_version())"],
                              capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as e:
        return None, str(e)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return None, f"not importable: {tail}"
    return proc.stdout.strip(), ""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=list(MODELS))
    p.add_argument("--runtimes", nargs="+", default=list(DEFAULT_RUNTIMES),
                   choices=list(RUNTIMES),
                   help="which runtimes to time (the first four; convrt_bf16 = convrt with "
                   "precision='bf16', opt-in); onnxruntime is the output oracle, "
                        "so without it nothing is checked")
    p.add_argument("--repeat", type=int, default=5,
                   help="timed warm runs per runtime per round (5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up runs (2)")
    p.add_argument("--rounds", type=int, default=8,
                   help="rounds in which every runtime takes its turn, --repeat runs each; the "
                        "runs of all rounds are pooled (8)")
    p.add_argument("--threads", type=int, default=2, help="threads for every runtime (2)")
    p.add_argument("--pause", type=float, default=2.0, help="seconds between processes (2)")
    p.add_argument("--no-empty-cache", action="store_true",
                   help="skip convrt's empty-numba-cache start-up (it compiles every kernel)")
    p.add_argument("--out", default=str(HERE / "results" / "latest.json"))
    p.add_argument("--markdown", help="also write the table as Markdown to this file")
    args = p.parse_args(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    runtimes = [k for k in RUNTIMES if k in args.runtimes]
    skipped, versions = {}, {}
    ov = [k for k in runtimes if k.startswith("ov_")]
    if ov:
        versions["openvino"], why = openvino_status()
        if versions["openvino"] is None:
            del versions["openvino"]
            skipped = {k: why for k in ov}
            runtimes = [k for k in runtimes if k not in ov]
            print(f"OpenVINO {why}; skipping {' and '.join(ov)} "
                  "(pip install -e \".[bench]\" to compare with it)", flush=True)

    log("measuring the float32 matmul peak")
    peak = worker({"kind": "peak", "threads": args.threads, "repeat": 7, "warmup": 2})
    peak_gf = peak.get("gflops_median", 0.0)
    time.sleep(args.pause)
    results = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
               "machine": machine(), "threads": args.threads, "repeat": args.repeat,
               "rounds": args.rounds, "runtimes": runtimes, "skipped": skipped,
               "versions": versions, "peak_gflops": peak_gf, "peak": peak, "models": {}}
    for name in args.models:
        r = results["models"][name] = bench_model(name, args, runtimes, peak_gf, log)
        if r.get("ort", {}).get("version"):
            versions["ort"] = results["ort_version"] = r["ort"]["version"]
        if r.get("convrt", {}).get("version"):
            versions["convrt"] = r["convrt"]["version"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(render_text(results))
    print(f"\nwrote {out}")
    if args.markdown:
        Path(args.markdown).write_text(render_markdown(results))
        print(f"wrote {args.markdown}")
    # the exit status is about convrt: a peer's failed check is in the table, not convrt's fault
    if "convrt" in runtimes and "ort" in runtimes:
        bad = [n for n, r in results["models"].items()
               if not r.get("checks", {}).get("convrt", {}).get("ok")]
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
