"""Does each method beat its ablations and a random network? Paired CIs.

The main job (``sklearn-cl3d demo``) shows y-Aware against SimCLR, a random
network and PCA over pretraining seeds and probe splits. This script holds
the other three methods to the same standard, on the built-in data, at the
scale of their gallery examples:

``wsp``
    WSP on the synthetic chest CT cohort (weak label = the reference label
    flipped for a random quarter of the volumes), against its ablations
    (slice position only, weak label only, neither = SimCLR) and a random
    network; linear probe of the frozen volume features on the reference
    label, by number of labelled volumes.
``globallocal``
    Global-local on brain tissue segmentation (``make_brain_cohort(
    return_labels=True)``, 4 mm T1: CSF, grey and white matter): the U-Net
    fine-tuned on 1 or 2 labelled volumes (100 steps, the same for every
    initialisation) from random weights, from the global stage only, and from
    both stages; mean foreground Dice on 10 test volumes. The repeats are
    labelled subsets (fine-tuning seed = repeat).
``drasclr``
    DrasCLR on the synthetic chest CT cohort (64^3 at 5 mm, 16^3 patches at
    13 landmarks), against no location routing (``conditioning=False``), no
    neighbour loss (``beta=0``) and a random network, plus the hand-crafted
    LAA-950 index per landmark; ridge regression of the upper-zone
    emphysema (log scale) on the frozen mean-pooled features, R^2.

Every method is pretrained with ``--seeds`` seeds and probed over
``--splits`` stratified shuffle splits; :func:`sklearn_cl3d.evaluation.
paired_differences` gives each method minus the full method with a bootstrap
95 % CI over seeds x splits. The JSON keeps every score.

One experiment at a time::

    cd benchmarks
    python method_effects.py wsp --out measured/effect_wsp.json
    python method_effects.py globallocal --out measured/effect_globallocal.json
    python method_effects.py drasclr --out measured/effect_drasclr.json

Options change one factor (``--flip``, ``--sigma``, ``--epochs``, ``--lr``,
...); ``--only`` restricts the methods.

A/B of one parameter of the full method (e.g. a default against the
official value, see :mod:`sklearn_cl3d.protocols`): ``--set NAME=VALUE``
(repeatable; VALUE is a Python literal or a plain string) adds a variant,
the full method with those parameters (``"WSP [normalize='uint8']"``), pretrained
with the same seeds and probed on the same splits; ``--only`` then also
keeps the set variant of every method it names. The JSON gets an ``"ab"``
entry with the paired differences *full method (unchanged) minus set
variant* and their 95 % CIs. Global-local applies ``--set`` to both stages,
or with ``--set-stage local`` to the local stage only (from the same global
stage); ``--set-ft NAME=VALUE`` instead changes a fine-tuning parameter
(:class:`~sklearn_cl3d.ContrastiveSegmenter`) of the same pretrained
networks. ``--local-base NAME=VALUE`` and ``--ft-base NAME=VALUE``
(global-local, repeatable) set a local-stage or fine-tuning parameter of
every variant, the unchanged one included: the benchmark's local stage is
``local='LR'`` and its fine-tuning Dice + CE (``ce_weight=1.0``), as its
results were measured, so ``--ft-base ce_weight=0.0`` fine-tunes with the
library's default Dice loss. ``--set normalize='uint8'`` (WSP) multiplies
the windowed volumes by 255 first, since that input expects intensities in 0-255;
``--set balance_on=scores`` gives every variant 5-level scores the weak
label derives from (``fit(scores=...)``, see ``_weak_scores``). Without
``--set`` nothing changes::

    python method_effects.py wsp --only WSP --set normalize=uint8 \
        --out measured/defaults_ab_wsp_normalize.json About 4 min (wsp), 20 min
(globallocal) and 15 min (drasclr) with one torch thread on 2 cores.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import machine  # noqa: E402


def _log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _table(results, reference):
    from sklearn_cl3d.evaluation import paired_differences, summarize

    summary = summarize(results)
    diffs = paired_differences(results, reference, random_state=0)
    for row in summary:
        _log(
            f"{row['method']:>22s} n={row['n_labels']:>4d} "
            f"{row['mean']:.3f} +/- {row['std']:.3f}"
        )
    for d in diffs:
        _log(
            f"{d['method']:>22s} - {reference} n={d['n_labels']:>4d} "
            f"{d['mean_difference']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
            f" ({d['n_seeds']} seeds x {d['n_splits']} splits)"
        )
    return summary, diffs


def _parse_sets(items):
    """``["name=value", ...]`` -> ``{name: value}`` (values as literals)."""
    sets = {}
    for item in items or ():
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--set expects NAME=VALUE; got {item!r}")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        sets[name.strip()] = value
    return sets


def _set_name(name, sets):
    inner = ", ".join(f"{k}={v!r}" for k, v in sets.items())
    return f"{name} [{inner}]"


def _only(args, sets):
    """``--only`` with the set variant of every method it names."""
    if not args.only:
        return args.only
    return list(args.only) + [_set_name(n, sets) for n in args.only]


def _ab(results, full, sets):
    """Paired differences full method minus its ``--set`` variant."""
    from sklearn_cl3d.evaluation import paired_differences

    changed = _set_name(full, sets)
    diffs = [
        d
        for d in paired_differences(results, changed, random_state=0)
        if d["method"] == full
    ]
    for d in diffs:
        _log(
            f"A/B {full} - {changed} n={d['n_labels']:>4d} "
            f"{d['mean_difference']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"
        )
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "parameters": sets,
        "default": full,
        "changed": changed,
        "difference": f"{full} minus {changed} (positive: the unchanged "
        "full method scores higher)",
        "paired_differences": diffs,
    }


# --------------------------------------------------------------------- WSP
WSP_COMMON = dict(
    backbone="sklearn_cl3d.nn.ResNet2D",
    backbone__blocks=(1, 1, 1, 1),
    backbone__widths=(8, 16, 32, 64),
    slice_size=48,
    hidden_dim=64,
    projection_dim=32,
    batch_size=32,
    lr=1e-3,
    max_epochs=20,
    device="cpu",
    verbose=0,
)
WSP_VARIANTS = {
    "WSP": dict(sigma=0.1),
    "position only": dict(sigma=0.1, use_labels=False),
    "weak label only": dict(use_positions=False),
    "SimCLR": dict(use_labels=False, use_positions=False),
    "random network": dict(max_epochs=0),
}


def _weak_scores(weak, fraction):
    """5-level scores the binary weak label derives from (weak = score >= 2):
    weak-negative volumes get 0 or 1 (below or above the group's median
    emphysema fraction), weak-positive ones 2, 3 or 4 (its terciles)."""
    scores = np.zeros(len(weak), dtype=int)
    for label, levels in ((0, (0, 1)), (1, (2, 3, 4))):
        idx = np.flatnonzero(weak == label)
        if idx.size == 0:
            continue
        edges = np.quantile(fraction[idx], np.linspace(0, 1, len(levels) + 1)[1:-1])
        scores[idx] = np.asarray(levels)[np.searchsorted(edges, fraction[idx])]
    return scores


def wsp(args):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from sklearn_cl3d import WSPPretrainer
    from sklearn_cl3d.data import HUWindow
    from sklearn_cl3d.datasets import make_lung_cohort
    from sklearn_cl3d.evaluation import label_efficiency
    from sklearn_cl3d.nn import ResNet2D

    n_pretrain, n_labelled = args.n_pretrain, args.n_labelled
    cohort = make_lung_cohort(
        n_pretrain + n_labelled, shape=(48, 48, 48), spacing=320 / 48, random_state=0
    )
    X = HUWindow(low=-1000.0, high=-700.0).fit_transform(cohort.volumes)
    y_true = (cohort.emphysema_fraction > 0.10).astype(int)
    rng = np.random.default_rng(0)
    flipped = rng.random(len(y_true)) < args.flip
    y_weak = np.where(flipped, 1 - y_true, y_true)
    X_pool, weak_pool = X[:n_pretrain], y_weak[:n_pretrain]
    X_lab, y_lab = X[n_pretrain:], y_true[n_pretrain:]
    sets = _parse_sets(args.set)
    input_scale = 255.0 if sets.get("normalize") == "uint8" else 1.0
    if input_scale != 1.0:  # uint8 / 250 expects intensities in 0-255
        X_pool, X_lab = X_pool * input_scale, X_lab * input_scale
    fit_scores = {}
    if sets.get("balance_on") == "scores":
        fit_scores["scores"] = _weak_scores(
            weak_pool, cohort.emphysema_fraction[:n_pretrain]
        )

    common = {
        **WSP_COMMON,
        "backbone": ResNet2D,
        "max_epochs": args.epochs,
        "lr": args.lr,
    }
    variants = {
        name: {**params, "sigma": args.sigma} if "sigma" in params else params
        for name, params in WSP_VARIANTS.items()
    }
    if sets:
        variants[_set_name("WSP", sets)] = {**variants["WSP"], **sets}
    only = _only(args, sets)
    methods, timings, losses = {}, {}, {}
    for name, params in variants.items():
        if only and name not in only:
            continue
        fits = []
        for seed in range(args.seeds):
            tic = time.perf_counter()
            est = WSPPretrainer(**{**common, **params, "random_state": seed})
            est.fit(X_pool, weak_pool, **fit_scores)
            timings.setdefault(name, []).append(time.perf_counter() - tic)
            if est.history:
                losses.setdefault(name, []).append(
                    [float(v) for v in est.history[:, "train_loss"]]
                )
            fits.append(est)
            _log(f"{name} seed {seed}: {timings[name][-1]:.1f} s")
        methods[name] = fits
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=args.C, max_iter=2000))
    results = label_efficiency(
        methods,
        X_lab,
        y_lab,
        n_labels=args.labels,
        protocols="linear_probe",
        n_repeats=args.splits,
        test_size=args.test_size,
        probe=probe,
        random_state=0,
    )
    summary, diffs = _table(results, "WSP")
    extra = {}
    if sets:
        extra["ab"] = _ab(results, "WSP", sets)
        extra["ab"]["input_scale"] = input_scale
        if fit_scores:
            extra["ab"]["scores"] = {
                "construction": _weak_scores.__doc__.strip(),
                "counts": np.bincount(fit_scores["scores"]).tolist(),
            }
    return {
        **extra,
        "setting": {
            "n_pretrain": n_pretrain,
            "n_labelled": n_labelled,
            "weak_label_flip": args.flip,
            "weakly_positive": float(weak_pool.mean()),
            "labelled_positive": float(y_lab.mean()),
            "common": {k: str(v) for k, v in common.items()},
            "variants": variants,
            "probe": f"StandardScaler + LogisticRegression(C={args.C})",
        },
        "fit_seconds": timings,
        "train_loss": losses,
        "results": results,
        "summary": summary,
        "paired_differences": diffs,
    }


# ------------------------------------------------------------ global-local
def globallocal(args):
    from sklearn_cl3d import ContrastiveSegmenter, GlobalLocalPretrainer
    from sklearn_cl3d.datasets import make_brain_cohort

    n_unlab, n_pool, n_test = args.n_pretrain, args.n_pool, args.n_test
    cohort = make_brain_cohort(
        n_unlab + n_pool + n_test,
        resolution=args.resolution,
        random_state=0,
        return_labels=True,
    )
    X, labels = cohort.volumes, cohort.labels
    n_classes = 4
    if args.target == "hemisphere":
        # grey and white matter of each hemisphere (the first array axis runs
        # from the subject's left to right); CSF joins the background
        right = (np.arange(labels.shape[1]) >= labels.shape[1] // 2)[
            None, :, None, None
        ]
        labels = np.where(labels >= 2, 2 * (labels - 2) + 1 + right, 0)
        n_classes = 5
    X_unlab = X[:n_unlab]
    X_pool, y_pool = X[n_unlab : n_unlab + n_pool], labels[n_unlab : n_unlab + n_pool]
    X_test, y_test = X[-n_test:], labels[-n_test:]
    net = dict(channels=tuple(args.channels), slice_size=args.slice_size)
    pretrain = dict(
        strategy="GD",
        local=None,
        n_partitions=4,
        max_epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        device="cpu",
        verbose=0,
        **net,
    )
    sets, ft_sets = _parse_sets(args.set), _parse_sets(args.set_ft)
    # the unchanged method's local stage and fine-tuning; Dice + CE
    # (ce_weight=1.0), as measured before the default became Dice only
    local_base = {"local": "LR", **_parse_sets(args.local_base)}
    ft_base = {"ce_weight": 1.0, **_parse_sets(args.ft_base)}
    if sets and ft_sets:
        raise SystemExit("--set and --set-ft are separate A/Bs; give one.")
    only = _only(args, sets or ft_sets)
    inits, timings, losses = {"random init": [None]}, {}, {}

    def pretrain_seed(seed, suffix="", global_sets=None, local_sets=None, g=None):
        if g is None:
            tic = time.perf_counter()
            g = GlobalLocalPretrainer(
                **{**pretrain, **(global_sets or {})}, random_state=seed
            ).fit(X_unlab)
            timings.setdefault("global" + suffix, []).append(time.perf_counter() - tic)
        tic = time.perf_counter()
        gl = copy.deepcopy(g).set_params(
            **{**local_base, **(local_sets or {})},
            max_epochs=0,
            local_epochs=args.epochs,
        )
        gl.partial_fit(X_unlab)
        timings.setdefault("local" + suffix, []).append(time.perf_counter() - tic)
        for name, est in (("global only", g), ("global + local", gl)):
            if suffix and name == "global only" and global_sets is None:
                continue  # the same global stage as the unchanged method
            inits.setdefault(name + suffix, []).append(est)
            losses.setdefault(name + suffix, []).append(
                [[row["stage"], float(row["train_loss"])] for row in est.history]
            )
        _log(
            f"pretraining seed {seed}{suffix}: "
            f"{timings.get('global' + suffix, [0])[-1]:.0f} s + "
            f"{timings['local' + suffix][-1]:.0f} s"
        )
        return g

    for seed in range(args.seeds):
        g = pretrain_seed(seed)
        if sets:
            suffix = _set_name("", sets)
            if args.set_stage == "local":
                pretrain_seed(seed, suffix, local_sets=sets, g=g)
            else:
                pretrain_seed(seed, suffix, global_sets=sets, local_sets=sets)

    # (name, pretrained fits, fine-tuning parameters); --set-ft adds every
    # initialisation fine-tuned with the changed parameters
    runs = [(name, fits, {}) for name, fits in inits.items()]
    if ft_sets:
        runs += [(_set_name(name, ft_sets), fits, ft_sets) for name, fits, _ in runs]

    n_slices = X.shape[-1]
    rng = np.random.default_rng(0)
    results = []
    for repeat in range(args.splits):
        chosen = rng.choice(n_pool, size=max(args.labels), replace=False)
        for n in args.labels:
            train = chosen[:n]
            steps_per_epoch = -(-n * n_slices // args.ft_batch)
            epochs = max(1, round(args.ft_steps / steps_per_epoch))
            for name, fits, ft_params in runs:
                if only and name not in only:
                    continue
                for seed, pretrained in enumerate(fits):
                    tic = time.perf_counter()
                    seg = ContrastiveSegmenter(
                        pretrained,
                        n_classes=n_classes,
                        max_epochs=epochs,
                        batch_size=args.ft_batch,
                        bn_momentum=0.1,
                        device="cpu",
                        verbose=0,
                        random_state=repeat,
                        **({} if pretrained is not None else net),
                        **{**ft_base, **ft_params},
                    )
                    seg.fit(X_pool[train], y_pool[train])
                    results.append(
                        {
                            "method": name,
                            "protocol": "fine_tune",
                            "n_labels": int(n),
                            "repeat": repeat,
                            "seed": None if pretrained is None else seed,
                            "score": float(seg.score(X_test, y_test)),
                            "fit_seconds": time.perf_counter() - tic,
                        }
                    )
        _log(f"split {repeat} done")
    summary, diffs = _table(results, "global + local")
    extra = {}
    if sets:
        extra["ab"] = _ab(results, "global + local", sets)
        extra["ab"]["set_stage"] = args.set_stage
    elif ft_sets:
        extra["ab"] = _ab(results, "global + local", ft_sets)
        extra["ab"]["stage"] = "fine-tuning (ContrastiveSegmenter)"
    if sets or ft_sets:
        extra["ab"]["local_base"] = local_base
        extra["ab"]["ft_base"] = ft_base
    return {
        **extra,
        "setting": {
            "cohort": f"make_brain_cohort(resolution={args.resolution}, "
            "return_labels=True), T1w",
            "target": (
                "0 bg / 1 CSF / 2 GM / 3 WM"
                if args.target == "tissue"
                else "0 bg+CSF / 1 left GM / 2 right GM / 3 left WM / 4 right WM"
            ),
            "n_unlabelled": n_unlab,
            "n_pool": n_pool,
            "n_test": n_test,
            "pretraining": {k: str(v) for k, v in pretrain.items()},
            "fine_tuning": {
                "steps": args.ft_steps,
                "batch_size": args.ft_batch,
                "loss": "Dice + CE",
                "bn_momentum": 0.1,
                "score": "mean foreground Dice on the test volumes",
            },
        },
        "pretrain_seconds": timings,
        "train_loss": losses,
        "results": results,
        "summary": summary,
        "paired_differences": diffs,
    }


# ------------------------------------------------------------------ DrasCLR
DRASCLR_VARIANTS = {
    "DrasCLR": {},
    "no location routing": {"conditioning": False},
    "no neighbour loss": {"beta": 0.0},
    "random network": {"max_epochs": 0},
}


class _LAA950(TransformerMixin, BaseEstimator):
    """Share of voxels below -950 HU in every landmark window (fixed)."""

    def __init__(self, landmarks=None, patch_size=16):
        self.landmarks = landmarks
        self.patch_size = patch_size

    def fit(self, X, y=None):
        self.fitted_ = True
        return self

    def transform(self, X):
        from sklearn_cl3d.data import extract_patches

        return np.stack(
            [
                (extract_patches(x, self.landmarks, self.patch_size) < -950).mean(
                    axis=(1, 2, 3, 4)
                )
                for x in X
            ]
        )


def drasclr(args):
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from sklearn_cl3d import DrasCLREncoder
    from sklearn_cl3d.data import make_landmarks
    from sklearn_cl3d.datasets import make_lung_cohort
    from sklearn_cl3d.evaluation import label_efficiency

    n_pretrain, n_labelled = args.n_pretrain, args.n_labelled
    cohort = make_lung_cohort(
        n_pretrain + n_labelled, shape=(64, 64, 64), spacing=5.0, random_state=0
    )
    X = cohort.volumes
    regional = cohort.regional_emphysema
    upper = regional[:, [0, 3]].mean(axis=1)  # right_upper, left_upper
    y = np.log10(0.01 + upper)
    patch_size = 16
    atlas_mask = cohort.lung_mask[:n_pretrain, 0].mean(axis=0) > 0.5
    landmarks = make_landmarks(
        atlas_mask, patch_size=patch_size, stride=12, min_fraction=0.3
    )
    common = dict(
        patch_size=patch_size,
        landmarks=landmarks,
        n_experts=8,
        n_neighbors=2,
        queue_size=64,
        batch_size=24,
        max_epochs=args.epochs,
        lr=args.lr,
        device="cpu",
        verbose=0,
    )
    sets = _parse_sets(args.set)
    variants = dict(DRASCLR_VARIANTS)
    if sets:
        variants[_set_name("DrasCLR", sets)] = {**variants["DrasCLR"], **sets}
    only = _only(args, sets)
    methods, timings, losses = {}, {}, {}
    for name, params in variants.items():
        if only and name not in only:
            continue
        for seed in range(args.seeds):
            tic = time.perf_counter()
            est = DrasCLREncoder(**{**common, **params, "random_state": seed})
            est.fit(X[:n_pretrain])
            timings.setdefault(name, []).append(time.perf_counter() - tic)
            if est.history:
                losses.setdefault(name, []).append(
                    [float(row["train_loss"]) for row in est.history]
                )
            methods.setdefault(name, []).append(est)
            _log(f"{name} seed {seed}: {timings[name][-1]:.1f} s")
    methods["LAA-950 per landmark"] = _LAA950(landmarks, patch_size).fit(None)
    if args.target == "auc":
        y = (upper > 0.05).astype(int)
        probe = make_pipeline(
            StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)
        )
        task = "classification"
    else:
        probe = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 13)))
        task = "regression"
    results = label_efficiency(
        methods,
        X[n_pretrain:],
        y[n_pretrain:],
        n_labels=args.labels,
        protocols="linear_probe",
        task=task,
        n_repeats=args.splits,
        test_size=args.test_size,
        probe=probe,
        random_state=0,
    )
    summary, diffs = _table(results, "DrasCLR")
    extra = {"ab": _ab(results, "DrasCLR", sets)} if sets else {}
    return {
        **extra,
        "setting": {
            "cohort": "make_lung_cohort(64^3, 5 mm)",
            "target": (
                "upper-zone emphysema fraction > 5 %, ROC AUC"
                if args.target == "auc"
                else "log10(0.01 + upper-zone emphysema fraction), R2"
            ),
            "n_pretrain": n_pretrain,
            "n_labelled": n_labelled,
            "n_landmarks": len(landmarks),
            "common": {k: str(v) for k, v in common.items() if k != "landmarks"},
            "variants": DRASCLR_VARIANTS,
            "probe": str(probe),
        },
        "fit_seconds": timings,
        "train_loss": losses,
        "results": results,
        "summary": summary,
        "paired_differences": diffs,
    }


DEFAULTS = {
    "wsp": {
        "labels": [20, 50, 100],
        "n_pretrain": 300,
        "epochs": 20,
        "lr": 1e-3,
        "target": None,
    },
    "globallocal": {
        "labels": [1, 2],
        "n_pretrain": 40,
        "epochs": 20,
        "lr": 1e-3,
        "target": "tissue",
    },
    "drasclr": {
        "labels": [20, 50, 100],
        "n_pretrain": 100,
        "epochs": 3,
        "lr": 0.05,
        "target": "r2",
    },
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("method", choices=["wsp", "globallocal", "drasclr"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--splits", type=int, default=10)
    parser.add_argument("--labels", type=int, nargs="+", default=None)
    parser.add_argument("--test-size", type=float, default=0.25)
    parser.add_argument("--only", nargs="+", default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--n-pretrain", type=int, default=None)
    parser.add_argument("--n-labelled", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--flip", type=float, default=0.25)
    parser.add_argument("--C", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--sigma", type=float, default=0.1)
    parser.add_argument(
        "--set",
        action="append",
        metavar="NAME=VALUE",
        default=None,
        help="A/B: add the full method with this pretraining parameter set "
        "(repeatable); compared against the unchanged full method",
    )
    parser.add_argument(
        "--set-ft",
        action="append",
        metavar="NAME=VALUE",
        default=None,
        help="globallocal: A/B of a ContrastiveSegmenter parameter, every "
        "initialisation fine-tuned with and without it (repeatable)",
    )
    parser.add_argument(
        "--local-base",
        action="append",
        metavar="NAME=VALUE",
        default=None,
        help="globallocal: a local-stage parameter of every variant, the "
        "unchanged one included (default local='LR'; repeatable)",
    )
    parser.add_argument(
        "--ft-base",
        action="append",
        metavar="NAME=VALUE",
        default=None,
        help="globallocal: a ContrastiveSegmenter parameter of every "
        "variant, the unchanged one included (default ce_weight=1.0, "
        "Dice + CE, as the benchmark's results were measured; repeatable)",
    )
    parser.add_argument(
        "--set-stage",
        choices=["both", "local"],
        default="both",
        help="globallocal: --set applies to both stages, or to the local "
        "stage only (from the unchanged global stage)",
    )
    # global-local
    parser.add_argument("--n-pool", type=int, default=20)
    parser.add_argument(
        "--target",
        choices=["tissue", "hemisphere", "r2", "auc"],
        default=None,
        help="globallocal: tissue (default) or hemisphere; drasclr: r2 "
        "(default) or auc",
    )
    parser.add_argument("--n-test", type=int, default=10)
    parser.add_argument("--resolution", type=int, default=4)
    parser.add_argument(
        "--channels", type=int, nargs=6, default=[8, 16, 32, 64, 64, 64]
    )
    parser.add_argument("--slice-size", type=int, default=64)
    parser.add_argument("--steps-per-epoch", type=int, default=25)
    parser.add_argument("--ft-steps", type=int, default=100)
    parser.add_argument("--ft-batch", type=int, default=8)
    args = parser.parse_args(argv)
    for key, value in DEFAULTS[args.method].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    tic = time.perf_counter()
    record = {"command": " ".join(sys.argv), "method": args.method}
    record["machine"] = machine("cpu")
    record.update(
        {"wsp": wsp, "globallocal": globallocal, "drasclr": drasclr}[args.method](args)
    )
    record["total_seconds"] = time.perf_counter() - tic
    _log(f"total {record['total_seconds']:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1, default=str))


if __name__ == "__main__":
    main()
