"""convrt's intermediate representation."""

from .analysis import dependency_graph, layers, sort_graph, toposort
from .core import Dim, Graph, Node, Shape, Value, copy_graph
from .function import Function, FunctionNode
from .released import Released

__all__ = ["Dim", "Function", "FunctionNode", "Graph", "Node", "Shape", "Value",
           "Released", "copy_graph", "dependency_graph", "layers", "sort_graph", "toposort"]
