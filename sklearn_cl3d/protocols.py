"""The official protocol of each method, as one recipe object per method.

A :class:`ProtocolRecipe` lists, for one method, every aspect of its
official protocol (pretraining, fine-tuning, evaluation) with the official
value, the library's default and the parameter that sets it. The library's
defaults stay as they are; the official protocol is opt-in:

>>> from sklearn_cl3d import WSPPretrainer
>>> from sklearn_cl3d.protocols import official_protocol
>>> recipe = official_protocol("wsp")
>>> wsp = recipe.apply(WSPPretrainer())
>>> wsp.steps_per_epoch, wsp.precision
(156, 'fp32')

:meth:`ProtocolRecipe.apply` returns an unfitted clone of the estimator with
every official value of that estimator's rows set; the user's other
parameters are kept. Aspects the library cannot set yet have no parameter
(``—`` in the tables) and are listed by :meth:`ProtocolRecipe.gaps`.

The tables below are generated from the recipe objects when this module is
imported (the "default" column is read from each estimator's constructor),
so the documentation cannot drift from the code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from sklearn.base import clone

__all__ = ["PROTOCOLS", "Aspect", "ProtocolRecipe", "official_protocol"]


@dataclass(frozen=True)
class Aspect:
    """One aspect of an official protocol.

    Parameters
    ----------
    stage : {"pretraining", "fine-tuning", "evaluation"}
        Which part of the protocol the aspect belongs to.
    aspect : str
        What it is (e.g. ``"learning rate"``).
    official : str
        The official value, in words (as the official code has it).
    estimator : str or None, default=None
        Name of the estimator class of this package that has the parameter.
    parameter : str or None, default=None
        The parameter that sets the aspect; None when the library has none
        yet (a gap).
    value : object or callable, default=None
        The value the recipe sets (ignored without ``parameter``); a
        function ``value(estimator)`` (not a class) for a value that depends
        on the estimator's other parameters.
    note : str, default=""
        Short remark for the table.

    Examples
    --------
    >>> Aspect("pretraining", "precision", "fp32", "WSPPretrainer",
    ...        "precision", "fp32").parameter
    'precision'
    """

    stage: str
    aspect: str
    official: str
    estimator: str | None = None
    parameter: str | None = None
    value: object = None
    note: str = ""

    def official_value(self, estimator):
        """The value the recipe sets on ``estimator`` for this aspect."""
        value = self.value
        if callable(value) and not isinstance(value, type):  # not a class
            return value(estimator)
        return value


def _estimator_class(name):
    import sklearn_cl3d

    return getattr(sklearn_cl3d, name)


#: estimators that take the rows written for another (same parameters)
_ALIASES = {"FineTunedRegressor": "FineTunedClassifier"}


def _fmt(value):
    if isinstance(value, type):
        module = value.__module__
        if module.startswith("torch.optim."):
            module = "torch.optim"
        return f"{module}.{value.__name__}"
    return repr(value)


@dataclass(frozen=True)
class ProtocolRecipe:
    """Every aspect of one method's official protocol, and how to set it.

    Parameters
    ----------
    method : str
        The method's name (``"yaware"``, ``"globallocal"``, ``"wsp"``,
        ``"drasclr"``).
    title : str
        Human-readable title (paper and official code).
    aspects : tuple of Aspect
        The rows of the protocol.

    Examples
    --------
    >>> from sklearn_cl3d import FineTunedClassifier
    >>> recipe = official_protocol("wsp")
    >>> clf = recipe.apply(FineTunedClassifier(max_epochs=3))
    >>> clf.lr, clf.lr_schedule, clf.augmentation, clf.max_epochs
    (1e-05, 'cosine', 'wsp', 40)
    >>> "ContrastiveSegmenter" in official_protocol("globallocal").estimators()
    True
    """

    method: str
    title: str
    aspects: tuple = field(default_factory=tuple)

    def estimators(self):
        """Names of the estimator classes the recipe sets parameters of."""
        names = []
        for a in self.aspects:
            if a.parameter is not None and a.estimator not in names:
                names.append(a.estimator)
        return names

    def params(self, estimator):
        """The official parameter values for ``estimator``.

        Parameters
        ----------
        estimator : estimator instance
            An estimator of one of :meth:`estimators` (a FineTunedRegressor
            takes the FineTunedClassifier rows); its other parameters choose
            values that depend on them, e.g. the L^D negatives.

        Returns
        -------
        dict
            ``{parameter: official value}``.
        """
        name = type(estimator).__name__
        name = _ALIASES.get(name, name)
        if name not in self.estimators():
            raise ValueError(
                f"the {self.method!r} recipe sets parameters of {self.estimators()}; "
                f"got a {name}."
            )
        return {
            a.parameter: a.official_value(estimator)
            for a in self.aspects
            if a.estimator == name and a.parameter is not None
        }

    def apply(self, estimator):
        """An unfitted clone of ``estimator`` with the official values set.

        Parameters
        ----------
        estimator : estimator instance
            One of :meth:`estimators`; parameters the recipe does not cover
            keep their values.

        Returns
        -------
        estimator instance
            A new, unfitted estimator.
        """
        params = self.params(estimator)
        return clone(estimator).set_params(**params)

    def gaps(self):
        """The aspects the library has no parameter for yet."""
        return [a for a in self.aspects if a.parameter is None]

    def table(self):
        """Rows ``{"stage", "aspect", "official", "default", "parameter"}``.

        The default is read from the estimator's constructor (``—`` when
        the aspect has no parameter).
        """
        rows = []
        for a in self.aspects:
            if a.parameter is None:
                default, parameter = "—", "—"
            else:
                cls = _estimator_class(a.estimator)
                default = _fmt(cls().get_params()[a.parameter])
                parameter = f"{a.estimator}.{a.parameter}"
            official = a.official
            if a.note:
                official = f"{official} ({a.note})"
            rows.append(
                {
                    "stage": a.stage,
                    "aspect": a.aspect,
                    "official": official,
                    "default": default,
                    "parameter": parameter,
                }
            )
        return rows

    def to_rst(self):
        """The table as a reStructuredText ``list-table``."""
        lines = [
            f".. list-table:: {self.title}",
            "   :header-rows: 1",
            "   :widths: 12 22 30 16 20",
            "",
            "   * - stage",
            "     - aspect",
            "     - official",
            "     - default",
            "     - parameter",
        ]
        for row in self.table():
            lines.append(f"   * - {row['stage']}")
            for key in ("aspect", "official", "default", "parameter"):
                text = row[key]
                if key in ("default", "parameter") and text != "—":
                    text = f"``{text}``"
                lines.append(f"     - {text}")
        return "\n".join(lines)


def _best_checkpoint(estimator):
    # the validation AUC needs class probabilities
    if type(estimator).__name__ == "FineTunedRegressor":
        return "valid_loss"
    return "valid_auc"


def _ld_negatives(estimator):
    return 4 if getattr(estimator, "local", None) == "LD" else 5


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
            "default: bf16 on CUDA",
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
            "set from local",
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
            "default: bf16 on CUDA",
        ),
        Aspect(
            "pretraining",
            "G^D pairs",
            "two volume sets, cyclic chain, no cross-volume orig-aug pairs",
            "GlobalLocalPretrainer",
            "gd_pairing",
            "official",
            "default: one set, all pairs; the official all-zero block is left out",
        ),
        Aspect(
            "pretraining",
            "G^R / L^R slice draws",
            "uniform over all slices",
            "GlobalLocalPretrainer",
            "slice_sampling",
            "uniform",
            "default: one slice per partition",
        ),
        Aspect(
            "pretraining",
            "several processes",
            "single GPU",
            note="no cross-process gathering of embeddings",
        ),
        Aspect(
            "fine-tuning",
            "loss",
            "Dice only (background included)",
            "ContrastiveSegmenter",
            "ce_weight",
            0.0,
            "Dice + CE by default",
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
            "default: bf16 on CUDA",
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
            "default: bf16 on CUDA",
        ),
        Aspect(
            "pretraining",
            "intensity",
            "uint8 / 250 (also the views' fill value)",
            "WSPPretrainer",
            "normalize",
            "uint8",
            "default: per-slice z-score",
        ),
        Aspect(
            "pretraining",
            "sampler balance",
            "on the raw 5-level score",
            "WSPPretrainer",
            "balance_on",
            "scores",
            "given as fit(scores=...); the weak labels otherwise",
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
            "balanced on the target classes; official: on the raw score",
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
            note="not implemented",
        ),
        Aspect(
            "pretraining",
            "preprocessing",
            "lung mask, affine registration to an atlas, 1 mm, 60-voxel pad",
            note="not built in",
        ),
        Aspect(
            "pretraining",
            "landmarks",
            "fixed table of 581",
            note="derived from the mean volume unless given",
        ),
    ),
)

#: The recipe of each method, by name.
PROTOCOLS = {r.method: r for r in (_YAWARE, _GLOBALLOCAL, _WSP, _DRASCLR)}


def official_protocol(method):
    """The :class:`ProtocolRecipe` of a method's official protocol.

    Parameters
    ----------
    method : {"yaware", "globallocal", "wsp", "drasclr"}
        The method.

    Returns
    -------
    ProtocolRecipe

    Examples
    --------
    >>> from sklearn_cl3d import GlobalLocalPretrainer
    >>> recipe = official_protocol("globallocal")
    >>> gl = recipe.apply(GlobalLocalPretrainer(local="LD"))
    >>> gl.n_iterations, gl.local_iterations, gl.gd_pairing, gl.n_negatives
    (10001, 10001, 'official', 4)
    >>> len(recipe.gaps()) > 0  # aspects with no parameter yet
    True
    """
    if method not in PROTOCOLS:
        raise ValueError(f"method must be one of {sorted(PROTOCOLS)}; got {method!r}.")
    return PROTOCOLS[method]


def _tables_doc():
    parts = []
    for recipe in PROTOCOLS.values():
        title = f"``{recipe.method}``"
        parts.append(f"{title}\n{'-' * len(title)}\n\n{recipe.to_rst()}\n")
    return "\n".join(parts)


__doc__ = f"{__doc__}\n{_tables_doc()}"
