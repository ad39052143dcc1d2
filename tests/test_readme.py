"""Every ```python block of README.md runs verbatim and exits 0.

Each block runs as its own ``python -c`` process in a fresh directory that holds a symlink
``sample_models`` -> the repository's, so the README's relative paths work as written and the
files a block writes (trained.onnx, profiles) land in that directory, not in the repository.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks() -> list[tuple[str, str]]:
    """(section heading, code) of every ```python block."""
    out, heading = [], ""
    for m in re.finditer(r"^(#+ [^\n]*)$|^```python\n(.*?)^```$", README, re.MULTILINE | re.DOTALL):
        if m.group(1):
            heading = m.group(1).lstrip("# ").strip()
        else:
            out.append((heading, m.group(2)))
    return out


BLOCKS = _blocks()


def test_readme_has_python_blocks():
    assert {h for h, _ in BLOCKS} >= {"Use it like onnxruntime", "Training"}


@pytest.mark.parametrize("heading,code", BLOCKS, ids=[h for h, _ in BLOCKS])
def test_python_block_runs_verbatim(heading, code, tmp_path):
    (tmp_path / "sample_models").symlink_to(ROOT / "sample_models", target_is_directory=True)
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, f"README block under '{heading}' failed:\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr
    if heading == "Use it like onnxruntime":
        lines = r.stdout.splitlines()
        assert lines[0] == "(8, 10)"
        assert re.fullmatch(r"convrt_profile_[-\d_]+\.json", lines[1]), lines
        assert (tmp_path / lines[1]).is_file()
    if heading == "Training":
        assert (tmp_path / "trained.onnx").is_file()
        accuracy = float(r.stdout.splitlines()[-1])
        assert accuracy > 0.5, r.stdout  # three epochs from random weights: well above chance
