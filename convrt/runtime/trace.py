"""Chrome traces of plan runs, shared by ``convrt bench --profile`` and session profiling.

``Plan.run(feeds, profile)`` appends ``(label, op_type, seconds)`` per executed step; this module
turns those lists into Trace Event Format events (``ph: "X"`` complete events, microseconds),
which chrome://tracing and https://ui.perfetto.dev open.  ``convrt bench`` writes one run as
``{"traceEvents": [...]}``; an :class:`InferenceSession` with ``enable_profiling`` writes every
run as a JSON list of events, the shape onnxruntime's profile files have.

It lives in ``runtime`` (not in ``bench``) so that the session can use it without importing the
command-line layer.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from ..errors import InputError

# A session that profiles millions of runs would hold every step's time in memory; onnxruntime
# stops recording at a fixed event count too.  Runs past the cap are not recorded.
MAX_PROFILED_STEPS = 1_000_000


def step_spans(prof, start: float, total: float) -> list[tuple[str, str, float, float]]:
    """``(label, op_type, start, seconds)`` for one run's profile list.

    The steps ran back to back; the run's time outside them (feed validation, picking the plan)
    is put before the first step, since only durations are recorded.
    """
    t = start + max(0.0, total - sum(p[2] for p in prof))
    out = []
    for label, op, secs in prof:
        out.append((label, op, t, secs))
        t += secs
    return out


def trace_events(spans, flops: dict | None = None, pid: int = 1, tid: int = 1,
                 sessions=()) -> list[dict]:
    """Complete events: one per step in ``spans`` (``(label, op_type, start_s, dur_s[, tid])``)
    and one per ``sessions`` entry (``(name, start_s, dur_s, tid)``, category "Session", as
    onnxruntime names its ``model_run`` and ``session_initialization`` events)."""
    events = []
    for name, start, dur, t in sessions:
        events.append({"name": name, "cat": "Session", "ph": "X", "ts": round(start * 1e6, 3),
                       "dur": round(dur * 1e6, 3), "pid": pid, "tid": t, "args": {}})
    for label, op, start, dur, *rest in spans:
        args = {"op_type": op, "op_name": op}  # op_name: the key onnxruntime's files use
        if flops and label in flops:
            args["gflop"] = flops[label] / 1e9
        events.append({"name": label, "cat": op, "ph": "X", "ts": round(start * 1e6, 3),
                       "dur": round(dur * 1e6, 3), "pid": pid, "tid": rest[0] if rest else tid,
                       "args": args})
    return events


def chrome_trace(spans, process: str, flops: dict | None = None) -> dict:
    """A Chrome trace object (``{"traceEvents": [...]}``) of ``spans``, as bench writes it."""
    meta = {"name": "process_name", "ph": "M", "pid": 1, "tid": 0, "args": {"name": process}}
    return {"traceEvents": [meta] + trace_events(spans, flops), "displayTimeUnit": "ms"}


def write_json(path, obj) -> None:
    try:
        Path(path).write_text(json.dumps(obj))
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror}") from None


class SessionProfiler:
    """Records every run of one session from its creation until :meth:`write`.

    Times are relative to the profiler's creation (onnxruntime's profiles start at session
    creation too); each run's events carry the calling thread's id, so concurrent runs appear as
    parallel tracks instead of overlapping on one.
    """

    def __init__(self, prefix: str, model: str):
        self.prefix, self.model = prefix, model
        self.t0 = time.perf_counter()
        self.sessions: list[tuple] = []
        self.spans: list[tuple] = []
        self._lock = threading.Lock()

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def add_session_event(self, name: str, start: float, dur: float) -> None:
        with self._lock:
            self.sessions.append((name, start, dur, threading.get_native_id()))

    def record_run(self, prof, start: float, total: float) -> None:
        """One run's profile list; ``start`` is :meth:`now` when the run began."""
        tid = threading.get_native_id()
        spans = [(*s, tid) for s in step_spans(prof, start, total)]
        with self._lock:
            if len(self.spans) + len(spans) > MAX_PROFILED_STEPS:
                return
            self.sessions.append(("model_run", start, total, tid))
            self.spans.extend(spans)

    def write(self) -> str:
        """Write ``<prefix>_<YYYY-mm-dd_HH-MM-SS_mmm>.json`` (onnxruntime's naming) and return
        its name; an existing file is never overwritten (a counter is added instead)."""
        now = time.time()
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(now))
        stamp += f"_{int(now * 1000) % 1000:03d}"
        with self._lock:
            events = trace_events(self.spans, pid=os.getpid(), sessions=self.sessions)
        meta = {"name": "process_name", "ph": "M", "pid": os.getpid(), "tid": 0,
                "args": {"name": f"convrt {self.model}"}}
        text = json.dumps([meta] + events)
        for i in range(1000):
            name = f"{self.prefix}_{stamp}{f'_{i}' if i else ''}.json"
            try:
                with open(name, "x") as f:
                    f.write(text)
                return name
            except FileExistsError:
                continue
            except OSError as e:
                raise InputError(f"cannot write the profile {name}: {e.strerror}") from None
        raise InputError(f"cannot write the profile {self.prefix}_{stamp}.json: 1000 files with "
                         "that name exist")
