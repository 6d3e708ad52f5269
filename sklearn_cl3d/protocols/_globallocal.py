"""The official protocol of global-local contrastive learning
(Chaitanya et al., NeurIPS 2020)."""

from __future__ import annotations

from ._recipe import Aspect, ProtocolRecipe

__all__ = []


def _ld_negatives(estimator):
    return 4 if getattr(estimator, "local", None) == "LD" else 5


_GLOBALLOCAL = ProtocolRecipe(
    "globallocal",
    "Global-local (Chaitanya et al., NeurIPS 2020; krishnabits001/domain_specific_cl)",
    (
        Aspect(
            "pretraining",
            "global strategy",
            "G^D",
            "GlobalLocalPretrainer",
            "strategy",
            "GD",
        ),
        Aspect(
            "pretraining",
            "local strategy",
            "L^R",
            "GlobalLocalPretrainer",
            "local",
            "LR",
        ),
        Aspect(
            "pretraining",
            "global stage length",
            "10,001 iterations",
            "GlobalLocalPretrainer",
            "n_iterations",
            10001,
            "default: max_epochs epochs",
        ),
        Aspect(
            "pretraining",
            "local stage length",
            "10,001 iterations",
            "GlobalLocalPretrainer",
            "local_iterations",
            10001,
            "default: local_epochs epochs",
        ),
        Aspect(
            "pretraining",
            "learning rate",
            "1e-3 (Adam)",
            "GlobalLocalPretrainer",
            "lr",
            1e-3,
        ),
        Aspect(
            "pretraining", "partitions", "4", "GlobalLocalPretrainer", "n_partitions", 4
        ),
        Aspect(
            "pretraining",
            "local regions",
            "13 hand-placed 3x3 regions",
            "GlobalLocalPretrainer",
            "regions",
            "official13",
        ),
        Aspect(
            "pretraining",
            "local negatives",
            "5 for L^R, 4 for L^D",
            "GlobalLocalPretrainer",
            "n_negatives",
            _ld_negatives,
            "set from local; the default None is these values",
        ),
        Aspect(
            "pretraining",
            "intensity draws",
            "one tied draw per call",
            "GlobalLocalPretrainer",
            "official_intensity",
            True,
        ),
        Aspect(
            "pretraining",
            "precision",
            "fp32",
            "GlobalLocalPretrainer",
            "precision",
            "fp32",
            "``\"auto\"`` opts in to bf16 on CUDA (and AMD bf16 CPUs)",
        ),
        Aspect(
            "pretraining",
            "G^D pairs",
            "two volume sets, cyclic chain, no cross-volume orig-aug pairs",
            "GlobalLocalPretrainer",
            "gd_pairing",
            "official",
            "default: one set, all pairs; the official all-zero block is left "
            "out. Kept: mean foreground Dice of all minus official -0.012 "
            "[-0.029, +0.002] (1 label), -0.003 [-0.027, +0.020] (2 labels), "
            "95 % CIs (``benchmarks/method_effects.py globallocal --only "
            "'global + local' --set gd_pairing=official --splits 4``, "
            "benchmarks/measured/defaults_ab_globallocal_gd_pairing.json)",
        ),
        Aspect(
            "pretraining",
            "G^R / L^R slice draws",
            "uniform over all slices",
            "GlobalLocalPretrainer",
            "slice_sampling",
            "uniform",
            "default: one slice per partition, kept: mean foreground Dice of "
            "partition minus uniform +0.018 [+0.004, +0.039] (1 label), +0.023 "
            "[-0.003, +0.081] (2 labels), 95 % CIs "
            "(``benchmarks/method_effects.py globallocal --only 'global + "
            "local' --set slice_sampling=uniform --set-stage local --splits "
            "4``, benchmarks/measured/defaults_ab_globallocal_slice_sampling"
            ".json)",
        ),
        Aspect(
            "pretraining",
            "several processes",
            "single GPU",
            "GlobalLocalPretrainer",
            "gather_distributed",
            True,
            "global loss over all processes' embeddings; local loss per process",
        ),
        Aspect(
            "fine-tuning",
            "loss",
            "Dice only (background included)",
            "ContrastiveSegmenter",
            "ce_weight",
            0.0,
            "the default since a paired A/B: mean foreground Dice of Dice + CE "
            "minus Dice only -0.073 [-0.107, -0.032] (1 label), -0.079 "
            "[-0.122, -0.039] (2 labels), 95 % CIs "
            "(``benchmarks/method_effects.py globallocal --only 'global + "
            "local' --set-ft ce_weight=0.0 --splits 4``, "
            "benchmarks/measured/defaults_ab_globallocal_ce_weight.json)",
        ),
        Aspect(
            "fine-tuning",
            "background in the Dice",
            "included",
            "ContrastiveSegmenter",
            "include_background",
            True,
        ),
        Aspect(
            "fine-tuning", "batch size", "20", "ContrastiveSegmenter", "batch_size", 20
        ),
        Aspect(
            "fine-tuning",
            "learning rate",
            "1e-3 (Adam)",
            "ContrastiveSegmenter",
            "lr",
            1e-3,
        ),
        Aspect(
            "fine-tuning",
            "precision",
            "fp32",
            "ContrastiveSegmenter",
            "precision",
            "fp32",
            "``\"auto\"`` opts in to bf16 on CUDA (and AMD bf16 CPUs)",
        ),
        Aspect(
            "fine-tuning",
            "length",
            "10,001 iterations",
            "ContrastiveSegmenter",
            "n_iterations",
            10001,
            "default: max_epochs epochs",
        ),
        Aspect(
            "fine-tuning",
            "augmentation",
            "rotation, scale, flip, elastic",
            "ContrastiveSegmenter",
            "augmentation",
            "official",
        ),
        Aspect(
            "evaluation",
            "checkpoint",
            "best validation Dice on 2 validation volumes",
            "ContrastiveSegmenter",
            "validation_fraction",
            2,
            "2 volumes of X held out; X_val, y_val of fit replace them",
        ),
        Aspect(
            "evaluation",
            "validation interval",
            "every 50 iterations",
            "ContrastiveSegmenter",
            "validation_interval",
            50,
        ),
    ),
)
