"""Shared test setup: sample_models/ on sys.path (for `builders`), small helpers."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
if str(SAMPLES) not in sys.path:
    sys.path.insert(0, str(SAMPLES))
