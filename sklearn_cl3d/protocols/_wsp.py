"""The official protocol of WSP (Sarfati et al., MICCAI 2023)."""

from __future__ import annotations

from ._recipe import Aspect, ProtocolRecipe

__all__ = []


def _best_checkpoint(estimator):
    # the validation AUC needs class probabilities
    if type(estimator).__name__ == "FineTunedRegressor":
        return "valid_loss"
    return "valid_auc"


_WSP = ProtocolRecipe(
    "wsp",
    "WSP (Sarfati et al., MICCAI 2023; Guerbet-AI/wsp-contrastive)",
    (
        Aspect(
            "pretraining", "encoder", "TinyNet", "WSPPretrainer", "backbone", "tinynet"
        ),
        Aspect(
            "pretraining", "learning rate", "1e-5 (Adam)", "WSPPretrainer", "lr", 1e-5
        ),
        Aspect(
            "pretraining", "weight decay", "1e-5", "WSPPretrainer", "weight_decay", 1e-5
        ),
        Aspect("pretraining", "epochs", "40", "WSPPretrainer", "max_epochs", 40),
        Aspect(
            "pretraining",
            "batch size",
            "64 slices of 64 volumes",
            "WSPPretrainer",
            "batch_size",
            64,
        ),
        Aspect(
            "pretraining",
            "steps per epoch",
            "10000 // 64 = 156",
            "WSPPretrainer",
            "steps_per_epoch",
            156,
            "default: n_volumes // batch_size",
        ),
        Aspect(
            "pretraining",
            "schedule",
            "cosine over the epochs",
            "WSPPretrainer",
            "lr_schedule",
            "cosine",
        ),
        Aspect(
            "pretraining",
            "position kernel width",
            "0.85 (config.py)",
            "WSPPretrainer",
            "sigma",
            0.85,
        ),
        Aspect(
            "pretraining", "temperature", "0.1", "WSPPretrainer", "temperature", 0.1
        ),
        Aspect(
            "pretraining", "position kernel", "rbf", "WSPPretrainer", "kernel", "rbf"
        ),
        Aspect(
            "pretraining",
            "views",
            "flips, resized crop, affine, rotation",
            "WSPPretrainer",
            "augmentation",
            "wsp",
        ),
        Aspect(
            "pretraining",
            "kept slices",
            "central 70 %",
            "WSPPretrainer",
            "slice_fraction",
            0.7,
        ),
        Aspect(
            "pretraining",
            "sampler",
            "one slice per volume, class-balanced",
            "WSPPretrainer",
            "balanced",
            True,
        ),
        Aspect(
            "pretraining",
            "precision",
            "fp32",
            "WSPPretrainer",
            "precision",
            "fp32",
            "``\"auto\"`` opts in to bf16 on CUDA (and AMD bf16 CPUs)",
        ),
        Aspect(
            "pretraining",
            "intensity",
            "uint8 / 250 (also the views' fill value)",
            "WSPPretrainer",
            "normalize",
            "uint8",
            "default: per-slice z-score, kept: linear-probe AUC of zscore minus "
            "uint8 +0.079 [+0.025, +0.140], +0.037 [-0.029, +0.093], +0.034 "
            "[-0.016, +0.079] at 20, 50, 100 labels, 95 % CIs "
            "(``benchmarks/method_effects.py wsp --only WSP --set normalize=uint8``, "
            "benchmarks/measured/defaults_ab_wsp_normalize.json)",
        ),
        Aspect(
            "pretraining",
            "sampler balance",
            "on the raw 5-level score",
            "WSPPretrainer",
            "balance_on",
            "scores",
            "given as fit(scores=...); the weak labels otherwise. Default "
            "weak_labels kept: linear-probe AUC of weak_labels minus scores "
            "+0.020 [-0.051, +0.093], -0.011 [-0.062, +0.039], -0.000 "
            "[-0.051, +0.041] at 20, 50, 100 labels, 95 % CIs "
            "(``benchmarks/method_effects.py wsp --only WSP --set balance_on=scores``, "
            "benchmarks/measured/defaults_ab_wsp_balance_on.json)",
        ),
        Aspect(
            "fine-tuning",
            "learning rate",
            "1e-5 (Adam)",
            "FineTunedClassifier",
            "lr",
            1e-5,
        ),
        Aspect(
            "fine-tuning",
            "weight decay",
            "1e-5",
            "FineTunedClassifier",
            "weight_decay",
            1e-5,
        ),
        Aspect(
            "fine-tuning",
            "schedule",
            "cosine over the epochs",
            "FineTunedClassifier",
            "lr_schedule",
            "cosine",
        ),
        Aspect(
            "fine-tuning",
            "epochs",
            "40 (config.py)",
            "FineTunedClassifier",
            "max_epochs",
            40,
        ),
        Aspect(
            "fine-tuning",
            "batch size",
            "64 slices",
            "FineTunedClassifier",
            "batch_size",
            64,
        ),
        Aspect(
            "fine-tuning",
            "augmentation",
            "the pretraining views",
            "FineTunedClassifier",
            "augmentation",
            "wsp",
        ),
        Aspect(
            "fine-tuning",
            "sampler",
            "one slice per volume, class-balanced",
            "FineTunedClassifier",
            "slice_sampling",
            "balanced",
        ),
        Aspect(
            "fine-tuning",
            "sampler balance",
            "on the raw 5-level score",
            "FineTunedClassifier",
            "balance_on",
            "scores",
            "given as fit(scores=...); the target classes otherwise",
        ),
        Aspect(
            "fine-tuning",
            "steps per epoch",
            "10000 // 64 = 156",
            "FineTunedClassifier",
            "steps_per_epoch",
            156,
            "default: n_volumes // batch_size",
        ),
        Aspect(
            "fine-tuning",
            "intensity",
            "uint8 / 250",
            "FineTunedClassifier",
            "normalize",
            "uint8",
        ),
        Aspect(
            "fine-tuning",
            "pretrained layers kept",
            "encoder and TinyNet fc1 (ResNet last_bn)",
            "FineTunedClassifier",
            "head",
            "official",
        ),
        Aspect(
            "evaluation",
            "checkpoint",
            "best validation AUC",
            "FineTunedClassifier",
            "keep_best",
            _best_checkpoint,
            "held-out validation_fraction; valid_loss for a regressor",
        ),
        Aspect(
            "evaluation",
            "volume prediction",
            "mean of slice probabilities",
            note="always so in FineTunedClassifier",
        ),
    ),
)
