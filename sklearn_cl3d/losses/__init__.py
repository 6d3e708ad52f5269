"""Contrastive losses and metadata kernels (pure torch).

One kernel-weighted InfoNCE (:func:`kernel_infonce`) serves y-Aware
(:func:`yaware_infonce`), SimCLR (:func:`nt_xent`) and the methods built on
them (:func:`wsp_infonce`); the kernels weight positives by metadata.
"""

from ._dice import DiceCELoss
from ._drasclr import DrasCLRLoss, drasclr_loss
from ._globallocal import (
    GLOBAL_STRATEGIES,
    LOCAL_STRATEGIES,
    REGION_LAYOUTS,
    GlobalContrastiveLoss,
    LocalContrastiveLoss,
    global_contrastive_loss,
    local_contrastive_loss,
    local_region_positions,
    official_global_labels,
    official_global_pairs,
    region_weight_from_nhwc,
)
from ._infonce import NORMALIZATIONS, kernel_infonce, partner_weights
from ._kernels import (
    KERNELS,
    check_bandwidth,
    delta_kernel,
    discrete_kernel,
    get_kernel,
    laplacian_kernel,
    product_kernel,
    rbf_kernel,
)
from ._ntxent import NTXentLoss, nt_xent
from ._pairwise import pairwise_infonce
from ._wsp import WSP_KERNELS, WSPLoss, distance_kernel, wsp_infonce
from ._yaware import YAwareLoss, yaware_infonce

__all__ = [
    "DiceCELoss",
    "DrasCLRLoss",
    "GLOBAL_STRATEGIES",
    "GlobalContrastiveLoss",
    "KERNELS",
    "LOCAL_STRATEGIES",
    "LocalContrastiveLoss",
    "NORMALIZATIONS",
    "NTXentLoss",
    "REGION_LAYOUTS",
    "WSP_KERNELS",
    "WSPLoss",
    "YAwareLoss",
    "check_bandwidth",
    "delta_kernel",
    "discrete_kernel",
    "distance_kernel",
    "drasclr_loss",
    "get_kernel",
    "global_contrastive_loss",
    "kernel_infonce",
    "laplacian_kernel",
    "local_contrastive_loss",
    "local_region_positions",
    "nt_xent",
    "official_global_labels",
    "official_global_pairs",
    "pairwise_infonce",
    "partner_weights",
    "product_kernel",
    "rbf_kernel",
    "region_weight_from_nhwc",
    "wsp_infonce",
    "yaware_infonce",
]
