"""The compile pipeline: ONNX -> IR (validated, shapes inferred) -> optimized IR.

This is the one module that imports ``passes``; the runtime receives a finished Graph.
"""

from __future__ import annotations

from . import float16
from .errors import ConvrtError, ModelLoadError, ShapeError
from .ir import Graph, sort_graph
from .onnx_io import DEFAULT_MEMORY_BUDGET, load_graph
from .ops.infer import infer, record


def check(graph: Graph) -> None:
    """Sort, infer and validate ``graph`` in place (load-time inference, symbolic dims kept)."""
    sort_graph(graph)
    env, _ = infer(graph)
    missing = [v.name for v in graph.outputs if v.name not in env]
    if missing:
        raise ModelLoadError(f"{graph.source}: graph outputs {missing} are never computed")
    record(graph, env)


def load(src, base_dir=None, memory_budget: int = DEFAULT_MEMORY_BUDGET,
         prepare=None) -> Graph:
    """Load an ONNX model (path, bytes or ModelProto) into a validated IR Graph.

    Args:
        src: the model.
        base_dir: where external data files live (defaults to the model file's directory;
            required for bytes that reference external data).
        memory_budget: bytes of weights the model may declare before loading is refused.
        prepare: called with the graph before it is validated (the trainer's rewrites of what
            only training runs, e.g. ``train/bn_mode.py``).
    """
    graph = load_graph(src, base_dir, memory_budget)  # read_model + to_graph, weights read once
    if prepare is not None:
        prepare(graph)
    # float16 models compute in float32 behind a float16 interface (convrt/float16.py); this is
    # what makes them runnable at all, so it is part of loading, not an optional pass
    lowered = float16.lower(graph, memory_budget)
    check(graph)
    if lowered is not None:
        float16.cast_outputs(graph, lowered)
    return graph


def optimize(graph: Graph, level: str = "all", disabled=()):
    """Run the pass pipeline for ``level``; returns the pass report (list of PassResult)."""
    try:
        import passes
    except ImportError as e:  # pragma: no cover - passes ships with convrt
        raise ConvrtError(f"the passes package is missing ({e})") from None
    try:
        return passes.optimize(graph, level=level, disabled=disabled)
    except ConvrtError:
        raise
    except Exception as e:  # a pass tripped on a graph validation let through: one line
        text = (str(e).strip().splitlines() or [""])[0][:300]
        raise ShapeError(f"{graph.source}: optimization failed ({type(e).__name__}: {text}); "
                         "graph_optimization_level='disable' skips the passes") from e
