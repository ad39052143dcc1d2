"""convrt.inspect: pass report, DOT and SVG pictures, and the `convrt inspect` command."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from convrt import compiler, inspect
from convrt.cli import main

SMALL_VGG = "sample_models/small_vgg.onnx"


def _optimized():
    g = compiler.load(SMALL_VGG)
    before = len(g.nodes)
    return g, compiler.optimize(g), before


def test_render_report():
    g, report, before = _optimized()
    text = inspect.render_report(report, before, len(g.nodes))
    lines = text.splitlines()
    assert lines[0] == "optimization: 24 -> 8 nodes (-16)"
    assert "  fold_batchnorm: 5 BatchNormalization folded into Conv" in lines
    assert any(line.startswith("  unchanged: ") for line in lines)
    assert inspect.render_report([], 24, 24) == "optimization: disabled (24 nodes)"


def test_render_dot():
    g, _, _ = _optimized()
    dot = inspect.render_dot(g)
    assert dot.startswith('digraph "') and dot.rstrip().endswith("}")
    assert dot.count("->") == len(g.nodes) + 1  # a chain: input -> ... -> output
    assert "convrt.FusedConvRelu 3×3" in dot


def test_render_svg_is_valid_and_labeled():
    g, _, _ = _optimized()
    svg = inspect.render_svg(g)
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    boxes = root.findall(f"{ns}g/{ns}rect")
    assert len(boxes) == len(g.nodes) + 2  # nodes + input + output
    texts = [t.text for t in root.iter(f"{ns}text")]
    assert "FusedConvRelu 3×3" in texts and "N×32×32×32" in texts and "logits" in texts


def test_cli_inspect_optimized(tmp_path, capsys):
    assert main(["inspect", SMALL_VGG, "--optimized"]) == 0
    out = capsys.readouterr().out
    assert "optimization: 24 -> 8 nodes" in out and "convrt.FusedConvRelu" in out
    path = tmp_path / "g.svg"
    assert main(["inspect", SMALL_VGG, "--optimized", "--format", "svg", "-o", str(path)]) == 0
    ET.fromstring(path.read_text())
    assert main(["inspect", SMALL_VGG, "--format", "dot"]) == 0
    assert "BatchNormalization" in capsys.readouterr().out
