"""Shared test setup: sample_models/ on sys.path (for `builders`), small helpers."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
if str(SAMPLES) not in sys.path:
    sys.path.insert(0, str(SAMPLES))

# Sessions in the tests run their compiled kernels: without this, a test on an empty numba
# cache would check the first tier's numpy kernels instead (convrt/runtime/tiers.py), and the
# compiled ones only when its background compile won the race.  tests/test_tiers.py turns the
# tiered start on where it is the subject.
import os  # noqa: E402

os.environ["CONVRT_TIERED_START"] = "0"


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (pyproject's addopts): two workers, or one on a single usable core.  Not one
    per core: each worker's kernels use every core already (convrt/runtime/threads.py), and
    the gain is compiling on an empty numba cache, single-threaded work, two at a time (the
    suite on the 2-core reference machine: 11.0 -> 6.4-7.5 min)."""
    from convrt.runtime.threads import usable_cpus  # affinity mask and cgroup quota

    return min(2, usable_cpus())
