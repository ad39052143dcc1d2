"""The layering of convrt/ and passes/, checked against the table docs/internals.md shows.

The allowed-imports table is parsed from docs/internals.md (between the ``layering:begin`` and
``layering:end`` markers), so the doc and the check cannot drift apart.  Every import anywhere
in a library file counts (module level, inside functions, ``importlib.import_module`` with a
literal name), relative imports resolved.
"""

import ast
import fnmatch
import re
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "internals.md"
MAX_LINES = 600
# Lazy aliases resolved on attribute access (PEP 562), never at import: the runtime's names
# for the session that moved to convrt/api.py (issue #19).  Kept out of the cycle check.
LAZY_ALIASES = {("convrt.runtime", "convrt.api"), ("convrt.runtime.session", "convrt.api")}
# Modules allowed over MAX_LINES, each with its reason (issue #19: empty when the conv split is in)
LONG_MODULES: dict[str, str] = {}


def _table():
    text = DOC.read_text()
    m = re.search(r"<!-- layering:begin.*?-->\n(.*?)<!-- layering:end -->", text, re.S)
    assert m, "docs/internals.md has no layering table"
    rows = {}
    for line in m.group(1).splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        layer, modules, allowed, onnx = cells
        rows[layer] = {"modules": re.findall(r"`([^`]+)`", modules),
                       "allowed": [a.strip().strip("`") for a in allowed.split(",") if a.strip()],
                       "onnx": onnx == "yes"}
    return rows


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _library():
    return {_module_name(p): p for top in ("convrt", "passes")
            for p in sorted((ROOT / top).rglob("*.py")) if "__pycache__" not in p.parts}


def _imports(path: Path, mods: dict):
    """(imported module, line) for every import in ``path``, relative ones resolved."""
    name = _module_name(path)
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                parts = parts[:len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((sub if sub in mods else base, node.lineno))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            fn = node.func
            fname = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if fname in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                out.append((node.args[0].value, node.lineno))
    return out


def _matches(module: str, pattern: str) -> bool:
    if pattern == "convrt":  # the package's __init__ only
        return module == "convrt"
    return fnmatch.fnmatch(module, pattern) or module.startswith(pattern + ".")


def _layer_of(module: str, rows: dict):
    """(layer, the matching pattern) by the longest pattern that matches, or (None, None)."""
    best = (None, "")
    for layer, row in rows.items():
        for p in row["modules"]:
            if _matches(module, p) and len(p) > len(best[1]):
                best = (layer, p)
    return best


@pytest.fixture(scope="module")
def graph():
    rows, mods = _table(), _library()
    edges = {m: _imports(p, mods) for m, p in mods.items()}
    return rows, mods, edges


def test_every_module_is_in_the_table(graph):
    rows, mods, _ = graph
    missing = [m for m in mods if _layer_of(m, rows)[0] is None]
    assert not missing, f"add these modules to the table in docs/internals.md: {missing}"


def test_table_names_known_layers(graph):
    rows, _, _ = graph
    bad = [(layer, a) for layer, row in rows.items() for a in row["allowed"]
           if a not in rows and "." not in a]
    assert not bad, bad


def test_imports_follow_the_table(graph):
    rows, mods, edges = graph
    bad = []
    for m, imports in edges.items():
        layer = _layer_of(m, rows)[0]
        allowed = rows[layer]["allowed"] if layer else []
        for target, line in imports:
            if target.split(".")[0] not in ("convrt", "passes") or (m, target) in LAZY_ALIASES:
                continue
            tlayer = _layer_of(target, rows)[0]
            if tlayer == layer or tlayer in allowed or \
                    any("." in a and _matches(target, a) for a in allowed):
                continue
            bad.append(f"{mods[m].relative_to(ROOT)}:{line}: {layer} imports {target} ({tlayer})")
    assert not bad, "\n".join(bad)


def test_onnx_only_at_the_boundary(graph):
    rows, mods, edges = graph
    bad = [f"{mods[m].relative_to(ROOT)}:{line}: {target}"
           for m, imports in edges.items() for target, line in imports
           if target.split(".")[0] == "onnx" or target.startswith("google.protobuf")
           if not rows[_layer_of(m, rows)[0]]["onnx"]]
    assert not bad, "onnx is imported outside convrt/onnx_io and convrt/backend.py:\n" + \
        "\n".join(bad)


def test_no_import_cycles(graph):
    _, mods, edges = graph
    g = nx.DiGraph()
    g.add_nodes_from(mods)
    for m, imports in edges.items():
        for target, _ in imports:
            if target in mods and target != m and (m, target) not in LAZY_ALIASES:
                g.add_edge(m, target)
    cycles = [] if nx.is_directed_acyclic_graph(g) else list(nx.simple_cycles(g))[:10]
    assert not cycles, f"import cycles: {cycles}"


def test_modules_are_short(graph):
    _, mods, _ = graph
    long = {m: n for m, p in mods.items()
            if (n := len(p.read_text().splitlines())) > MAX_LINES and m not in LONG_MODULES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_lazy_aliases_still_resolve():
    """The names that moved to convrt.api still import from where users had them."""
    import convrt.api
    from convrt.runtime import InferenceSession
    from convrt.runtime.session import MAX_PLANS, SessionOptions

    assert InferenceSession is convrt.api.InferenceSession
    assert SessionOptions is convrt.api.SessionOptions and MAX_PLANS == convrt.api.MAX_PLANS
