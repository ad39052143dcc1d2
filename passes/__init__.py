"""Graph optimization passes (placeholder until the pass pipeline lands)."""


def optimize(graph, level="all", disabled=()):
    """Run the pipeline for ``level``; returns the list of pass results."""
    return []
