"""Contrastive losses and metadata kernels (pure torch).

One kernel-weighted InfoNCE (:func:`kernel_infonce`) serves y-Aware
(:func:`yaware_infonce`), SimCLR (:func:`nt_xent`) and the methods built on
them (:func:`wsp_infonce`); the kernels weight positives by metadata.
"""

from ._drasclr import DrasCLRLoss, drasclr_loss
from ._infonce import NORMALIZATIONS, kernel_infonce, partner_weights
from ._kernels import (
    KERNELS,
    delta_kernel,
    discrete_kernel,
    get_kernel,
    laplacian_kernel,
    product_kernel,
    rbf_kernel,
)
from ._ntxent import NTXentLoss, nt_xent
from ._wsp import WSP_KERNELS, WSPLoss, wsp_infonce
from ._yaware import YAwareLoss, yaware_infonce

__all__ = [
    "DrasCLRLoss",
    "KERNELS",
    "NORMALIZATIONS",
    "NTXentLoss",
    "WSP_KERNELS",
    "WSPLoss",
    "YAwareLoss",
    "delta_kernel",
    "discrete_kernel",
    "drasclr_loss",
    "get_kernel",
    "kernel_infonce",
    "laplacian_kernel",
    "nt_xent",
    "partner_weights",
    "product_kernel",
    "rbf_kernel",
    "wsp_infonce",
    "yaware_infonce",
]
