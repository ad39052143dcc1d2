"""convrt's graph optimizer: an explicit, ordered pipeline of passes run to a fixed point.

Levels follow onnxruntime: ``basic`` = constant folding, identity/dropout elimination, BN
folding, conv-bias folding, dead-node elimination; ``extended``/``all`` add the fusions into
``convrt``-domain kernels (each with an ONNX function definition, so exports stay portable).
Only ``convrt/compiler.py`` imports this package.
"""

from __future__ import annotations

from typing import Callable, Iterable

from convrt.ir import Graph

from ._infra import LEVELS, Pass, PassManager, PassResult, select, verify_hook
from .channels_first import ChannelsFirstPass
from .eliminate_dead_nodes import EliminateDeadNodesPass
from .eliminate_identity import EliminateIdentityPass
from .fold_batchnorm import FoldBatchNormPass
from .fold_constants import FoldConstantsPass
from .fuse_conv_activation import FuseConvActivationPass
from .fuse_conv_add_relu import FuseConvAddReluPass
from .fuse_conv_bias import FuseConvBiasPass
from .fuse_conv_maxpool import FuseConvMaxPoolPass
from .fuse_gelu import FuseGeluPass
from .fuse_gemm_activation import FuseGemmActivationPass
from .fuse_silu import FuseSiluPass

# Order matters: constants first (they expose static parameters), identities out before
# pattern matching, BN folding before bias folding before the fusions (which need the final
# bias), channels-last stretches moved to NCHW before bias folding (their MatMul + Add become
# Conv + Add), residual fusion before SiLU before plain activation fusion, dead code last.
DEFAULT_PIPELINE: tuple[type[Pass], ...] = (
    FoldConstantsPass,
    EliminateIdentityPass,
    FoldBatchNormPass,
    ChannelsFirstPass,
    FuseConvBiasPass,
    FuseConvAddReluPass,
    FuseSiluPass,
    FuseGeluPass,
    FuseConvActivationPass,
    FuseConvMaxPoolPass,
    FuseGemmActivationPass,
    EliminateDeadNodesPass,
)

PASS_NAMES = tuple(p.name for p in DEFAULT_PIPELINE)

__all__ = ["DEFAULT_PIPELINE", "LEVELS", "PASS_NAMES", "Pass", "PassManager", "PassResult",
           "optimize", "verify_hook"]


def optimize(graph: Graph, level: str = "all", disabled: Iterable[str] = (),
             verify: bool | Callable[[Graph, str], None] | None = None,
             max_iterations: int = 4) -> list[PassResult]:
    """Optimize ``graph`` in place with the passes of ``level`` not named in ``disabled``.

    Args:
        graph: a loaded, validated Graph (``convrt.compiler.load``).
        level: "disable" | "basic" | "extended" | "all".
        disabled: pass names to skip; an unknown name raises InputError listing valid names.
        verify: re-check the IR after every modifying pass (see PassManager); None = on when
            the environment variable ``CONVRT_VERIFY_PASSES`` is set (tests set it).
        max_iterations: bound on pipeline repetitions.

    Returns:
        One PassResult per pass run, in pipeline order.
    """
    passes = select(DEFAULT_PIPELINE, level, disabled)
    if not passes:
        return []
    return PassManager(passes, max_iterations, verify).run(graph)
