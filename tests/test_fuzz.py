"""A bounded fuzz run: no crash, no hang, nothing but ConvrtError out of the public API.

The long run is ``python tests/fuzz/fuzzer.py --cases 10000 --seed S --workers 2``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))

import fuzzer  # noqa: E402

N_CASES = 320
SEED = 20240607


def test_mutations_are_deterministic():
    assert fuzzer.make_case(SEED, 7) == fuzzer.make_case(SEED, 7)
    assert fuzzer.make_case(SEED, 7)[1] != fuzzer.make_case(SEED, 8)[1]


def test_bounded_fuzz_run():
    res = fuzzer.fuzz(N_CASES, seed=SEED, workers=2, timeout=120.0)
    c = res["counts"]
    assert sum(c.values()) == N_CASES
    report = "\n".join(f"case {SEED}:{i} ({d}) {o}: {det.splitlines()[0] if det else ''}"
                       for i, d, o, det in res["findings"])
    assert c["crash"] == 0 and c["hang"] == 0, report
    assert c["other"] == 0 and c["wrapped"] == 0, report
    assert c["ran"] > N_CASES // 20, dict(c)  # the mutations still leave runnable models
