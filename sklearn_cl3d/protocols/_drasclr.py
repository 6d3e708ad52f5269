"""The official protocol of DrasCLR (Yu et al., Medical Image Analysis 2023)."""

from __future__ import annotations

import torch

from ._recipe import Aspect, ProtocolRecipe

__all__ = []

_DRASCLR = ProtocolRecipe(
    "drasclr",
    "DrasCLR (Yu et al., Medical Image Analysis 2023; official DrasCLR code)",
    (
        Aspect(
            "pretraining",
            "optimiser",
            "SGD, momentum 0.9",
            "DrasCLREncoder",
            "optimizer",
            torch.optim.SGD,
        ),
        Aspect("pretraining", "learning rate", "0.01", "DrasCLREncoder", "lr", 0.01),
        Aspect(
            "pretraining",
            "weight decay",
            "1e-4",
            "DrasCLREncoder",
            "weight_decay",
            1e-4,
        ),
        Aspect(
            "pretraining",
            "schedule",
            "cosine over 20 epochs",
            "DrasCLREncoder",
            "lr_schedule",
            "cosine",
        ),
        Aspect("pretraining", "epochs", "20", "DrasCLREncoder", "max_epochs", 20),
        Aspect(
            "pretraining",
            "batch size",
            "128 (4 GPUs x 32)",
            "DrasCLREncoder",
            "batch_size",
            128,
        ),
        Aspect("pretraining", "patch size", "32", "DrasCLREncoder", "patch_size", 32),
        Aspect("pretraining", "experts", "8", "DrasCLREncoder", "n_experts", 8),
        Aspect("pretraining", "neighbours", "2", "DrasCLREncoder", "n_neighbors", 2),
        Aspect(
            "pretraining",
            "queue",
            "4096 keys per landmark",
            "DrasCLREncoder",
            "queue_size",
            4096,
        ),
        Aspect("pretraining", "momentum", "0.999", "DrasCLREncoder", "momentum", 0.999),
        Aspect(
            "pretraining", "temperature", "0.2", "DrasCLREncoder", "temperature", 0.2
        ),
        Aspect(
            "pretraining", "neighbour loss weight", "1.0", "DrasCLREncoder", "beta", 1.0
        ),
        Aspect(
            "pretraining", "precision", "fp32", "DrasCLREncoder", "precision", "fp32"
        ),
        Aspect(
            "pretraining",
            "several processes",
            "keys gathered into the queues, shuffle-BN",
            "DrasCLREncoder",
            "gather_distributed",
            True,
            "under torchrun/accelerate; loss per process as official",
        ),
        Aspect(
            "pretraining",
            "preprocessing",
            "lungmask lung mask, ANTs affine registration of the lung masks to "
            "an atlas, 1 mm B-spline, 60-voxel pad, clip to [-1024, 240]",
            note="no parameter: run sklearn_cl3d.data.prepare_lung_ct on each CT "
            "before fit (threshold lung mask, MSE affine of the masks) and pass "
            "its maps as affines=",
        ),
        Aspect(
            "pretraining",
            "landmarks",
            "fixed table of 581 atlas corners (atlas_patch_loc.npy)",
            note="data the user supplies as DrasCLREncoder(landmarks=...); "
            "without it, derived from atlas_mask= or the mean volume",
        ),
    ),
)
