"""Neural-collapse maths: streaming statistics and pure metric functions.

Imports only torch (and :mod:`nctune.errors`): no model, data or rendering code.
"""

from nctune.collapse.distributed import all_reduce_stats
from nctune.collapse.functional import PINV_RTOL, nc2_from_means, nc3, ncc_accuracy, ncc_predict
from nctune.collapse.matrix import cdnv, nc1, nc2, trace_ratio
from nctune.collapse.metrics import CollapseMetrics
from nctune.collapse.stats import DEFAULT_MAX_FULL_DIM, CollapseStats, CollapseWarning
from nctune.errors import CollapseError

__all__ = [
    "DEFAULT_MAX_FULL_DIM",
    "PINV_RTOL",
    "CollapseError",
    "CollapseMetrics",
    "CollapseStats",
    "CollapseWarning",
    "all_reduce_stats",
    "cdnv",
    "nc1",
    "nc2",
    "nc2_from_means",
    "nc3",
    "ncc_accuracy",
    "ncc_predict",
    "trace_ratio",
]
