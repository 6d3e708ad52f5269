"""The official protocol of y-Aware (Dufumier et al., MICCAI 2021)."""

from __future__ import annotations

import torch

from ._recipe import Aspect, ProtocolRecipe

__all__ = []

_YAWARE = ProtocolRecipe(
    "yaware",
    "y-Aware (Dufumier et al., MICCAI 2021; Duplums/yAwareContrastiveLearning)",
    (
        Aspect(
            "pretraining",
            "encoder",
            "DenseNet-121 3D",
            "YAwarePretrainer",
            "backbone",
            "densenet121",
        ),
        Aspect(
            "pretraining",
            "optimiser",
            "Adam",
            "YAwarePretrainer",
            "optimizer",
            torch.optim.Adam,
        ),
        Aspect("pretraining", "learning rate", "1e-4", "YAwarePretrainer", "lr", 1e-4),
        Aspect(
            "pretraining",
            "weight decay",
            "5e-5",
            "YAwarePretrainer",
            "weight_decay",
            5e-5,
        ),
        Aspect(
            "pretraining", "kernel width", "5 (years)", "YAwarePretrainer", "sigma", 5.0
        ),
        Aspect(
            "pretraining", "temperature", "0.1", "YAwarePretrainer", "temperature", 0.1
        ),
        Aspect(
            "pretraining",
            "weight normalisation",
            "column broadcast",
            "YAwarePretrainer",
            "normalization",
            "official",
        ),
        Aspect(
            "pretraining",
            "views",
            "cutout",
            "YAwarePretrainer",
            "augmentation",
            "cutout",
        ),
        Aspect(
            "pretraining",
            "precision",
            "fp32",
            "YAwarePretrainer",
            "precision",
            "fp32",
            "``\"auto\"`` opts in to bf16 on CUDA (and AMD bf16 CPUs)",
        ),
        Aspect(
            "fine-tuning",
            "trained layers",
            "whole network",
            "FineTunedClassifier",
            "freeze",
            "none",
        ),
        Aspect(
            "fine-tuning", "learning rate", "1e-4", "FineTunedClassifier", "lr", 1e-4
        ),
        Aspect(
            "fine-tuning",
            "weight decay",
            "5e-5",
            "FineTunedClassifier",
            "weight_decay",
            5e-5,
        ),
        Aspect(
            "fine-tuning", "batch size", "8", "FineTunedClassifier", "batch_size", 8
        ),
        Aspect(
            "fine-tuning", "epochs", "100", "FineTunedClassifier", "max_epochs", 100
        ),
    ),
)
