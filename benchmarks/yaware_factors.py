"""When does y-Aware help? One factor at a time on the built-in brain cohort.

Regenerates the table of the user guide's section "When y-Aware helps, and
why". The reference recipe is the demo's CPU preset (8 mm cohort, small3d
8-16-32, 30 epochs, Adam 3e-3, batch 32, sigma 5, tau 0.1, cutout views,
pooled backbone features, StandardScaler + LogisticRegression(C=1) on
[features, age]); every variant changes one factor. Each variant is
pretrained on the demo's 600 unlabelled subjects (seed ``--seed``) and probed
on the demo's labelled subjects over ``--splits`` stratified shuffle splits
(25 % held out) with 100 and 400 labels. The JSON keeps every split's score
and the paired difference to the reference recipe (bootstrap 95 % CI over
splits: one pretraining seed per variant, so pretraining variance is not in
these CIs; the demo itself uses three seeds).

Run from the repository root (about 1.5 min per variant on 2 cores; the
4 mm and "previous preset" variants take longer)::

    python benchmarks/yaware_factors.py --out benchmarks/measured/yaware_factors.json
    python benchmarks/yaware_factors.py --only base sigma=10 --splits 5

``--list`` prints the variants.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import machine  # noqa: E402

N_UNLABELLED = 600
LABELS = (100, 400)

BASE = {
    "resolution": 8,
    "modality": "T1w",
    "channels": (8, 16, 32),
    "max_epochs": 30,
    "lr": 3e-3,
    "batch_size": 32,
    "sigma": 5.0,
    "temperature": 0.1,
    "normalization": "official",
    "augmentation": "cutout",
    "feature_layer": "backbone",
    "probe": "standardised, C=1",
    "method": "y-Aware",
}

#: name -> changes to BASE (one factor each, except the previous preset)
VARIANTS = {
    "base": {},
    "SimCLR (same recipe)": {"method": "SimCLR"},
    "random network": {"method": "random"},
    "probe: C by inner CV": {"probe": "standardised, C by 5-fold CV"},
    "probe: not standardised": {"probe": "raw, C=1"},
    "lr=1e-3": {"lr": 1e-3},
    "lr=1e-4 (paper)": {"lr": 1e-4},
    "epochs=10": {"max_epochs": 10},
    "channels 4-8-16": {"channels": (4, 8, 16)},
    "previous demo preset (4 mm, 4-8-16, 10 epochs, lr=1e-3)": {
        "resolution": 4,
        "channels": (4, 8, 16),
        "max_epochs": 10,
        "lr": 1e-3,
    },
    "sigma=2": {"sigma": 2.0},
    "sigma=10": {"sigma": 10.0},
    "normalization=row": {"normalization": "row"},
    "temperature=0.5": {"temperature": 0.5},
    "views: none": {"augmentation": "none"},
    "views: crop": {"augmentation": "crop"},
    "views: all": {"augmentation": "all"},
    "features: hidden layer": {"feature_layer": "hidden"},
    "features: projection": {"feature_layer": "projection"},
    "input: grey-matter maps": {"modality": "GM"},
    "SimCLR on grey-matter maps": {"modality": "GM", "method": "SimCLR"},
    "random network on grey-matter maps": {"modality": "GM", "method": "random"},
    "batch=16": {"batch_size": 16},
    "batch=64": {"batch_size": 64},
    "epochs=50": {"max_epochs": 50},
    "channels 16-32-64": {"channels": (16, 32, 64)},
    "sigma=20": {"sigma": 20.0},
    "resolution 4 mm": {"resolution": 4},
}

#: variants that reuse the base encoder (only the probe changes)
_PROBE_ONLY = {"probe: C by inner CV", "probe: not standardised"}


def _cohort(resolution, modality, seed, cache_dir):
    from sklearn_cl3d.datasets import make_brain_cohort

    n_labelled = 534  # the demo's: 400 training labels + 25 % held out
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"brain_{resolution}mm_{modality}_seed{seed}.npz"
        if path.exists():
            with np.load(path) as d:
                return {k: d[k] for k in d.files}
    c = make_brain_cohort(
        N_UNLABELLED + n_labelled,
        resolution=resolution,
        modality=modality,
        random_state=seed,
    )
    data = {"X": c.volumes, "age": c.age, "dx": c.diagnosis}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **data)
    return data


def _probe(kind):
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "standardised, C=1":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    if kind == "standardised, C by 5-fold CV":
        cv = LogisticRegressionCV(
            Cs=np.logspace(-3, 2, 11).tolist(),
            cv=5,
            scoring="roc_auc",
            l1_ratios=(0.0,),
            use_legacy_attributes=False,
            max_iter=5000,
        )
        return make_pipeline(StandardScaler(), cv)
    if kind == "raw, C=1":
        return LogisticRegression(max_iter=5000)
    raise ValueError(kind)


def _encoder(cfg, seed):
    from sklearn_cl3d import SimCLRPretrainer, YAwarePretrainer

    common = dict(
        backbone="small3d",
        backbone__channels=tuple(cfg["channels"]),
        batch_size=cfg["batch_size"],
        lr=cfg["lr"],
        max_epochs=cfg["max_epochs"],
        temperature=cfg["temperature"],
        augmentation=cfg["augmentation"],
        feature_layer=cfg["feature_layer"],
        device="cpu",
        random_state=seed,
    )
    if cfg["method"] == "y-Aware":
        return YAwarePretrainer(
            sigma=cfg["sigma"], normalization=cfg["normalization"], **common
        )
    if cfg["method"] == "random":
        common["max_epochs"] = 0
    return SimCLRPretrainer(**common)


def _split_scores(F, y, splits, probe):
    from sklearn.base import clone
    from sklearn.metrics import roc_auc_score

    out = {n: [] for n in LABELS}
    for s in splits:
        est = clone(probe).fit(F[s["train"]], y[s["train"]])
        proba = est.predict_proba(F[s["test"]])[:, 1]
        out[s["n_labels"]].append(float(roc_auc_score(y[s["test"]], proba)))
    return out


def _paired_ci(diff, rng, n_boot=10_000):
    diff = np.asarray(diff)
    idx = rng.integers(0, len(diff), size=(n_boot, len(diff)))
    means = diff[idx].mean(axis=1)
    return float(diff.mean()), *np.percentile(means, [2.5, 97.5]).tolist()


def run(names, seed, n_splits, cache_dir, log, checkpoint=None):
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from sklearn_cl3d.baselines import VoxelPCA, VoxelProxyRegression
    from sklearn_cl3d.evaluation import label_efficiency_splits

    rows, base_features = [], {}
    for name in names:
        cfg = {**BASE, **VARIANTS[name]}
        data = _cohort(cfg["resolution"], cfg["modality"], 0, cache_dir)
        X, age, dx = data["X"], data["age"], data["dx"]
        Xu, au = X[:N_UNLABELLED], age[:N_UNLABELLED]
        Xl, al, yl = X[N_UNLABELLED:], age[N_UNLABELLED:], dx[N_UNLABELLED:]
        splits = label_efficiency_splits(
            yl, list(LABELS), n_repeats=n_splits, test_size=0.25, random_state=0
        )
        t = time.perf_counter()
        if name in _PROBE_ONLY and "base" in base_features:
            Fl, Fu = base_features["base"]
            fit_s = 0.0
            loss = None
        else:
            enc = _encoder(cfg, seed).fit(Xu, au)
            fit_s = time.perf_counter() - t
            hist = enc.history_
            loss = (
                [hist[0]["train_loss"], hist[-1]["train_loss"]] if len(hist) else None
            )
            Fl, Fu = enc.transform(Xl), enc.transform(Xu)
            if name == "base":
                base_features["base"] = (Fl, Fu)
        # how much age the frozen features carry (ridge fitted on the
        # unlabelled subjects, correlation on the labelled ones)
        ridge = make_pipeline(StandardScaler(), Ridge(1.0)).fit(Fu, au)
        age_r = float(np.corrcoef(ridge.predict(Fl), al)[0, 1])
        scores = _split_scores(np.c_[Fl, al], yl, splits, _probe(cfg["probe"]))
        row = {
            "variant": name,
            "config": {
                k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()
            },
            "fit_seconds": fit_s,
            "loss_first_last": loss,
            "feature_age_r": age_r,
            "scores": {str(n): v for n, v in scores.items()},
        }
        for n in LABELS:
            row[f"auc_{n}"] = float(np.mean(scores[n]))
            row[f"sd_{n}"] = float(np.std(scores[n], ddof=1))
        rows.append(row)
        if checkpoint is not None:
            checkpoint(rows, base_features)
        log(
            f"{name:<48} AUC@100 {row['auc_100']:.3f} ± {row['sd_100']:.3f}  "
            f"AUC@400 {row['auc_400']:.3f} ± {row['sd_400']:.3f}  "
            f"age r {age_r:.2f}  fit {fit_s:.0f} s"
        )
        # the voxel baselines of each input at the base resolution
        where = f"{cfg['modality']}, {cfg['resolution']} mm"
        baselines = base_features.setdefault("baselines", {})
        if cfg["resolution"] == BASE["resolution"] and where not in baselines:
            pca = VoxelPCA(50, random_state=0).fit(Xu)
            reg = VoxelProxyRegression(200, random_state=0).fit(Xu, au)
            age_probe = _probe(BASE["probe"])
            baselines[where] = {
                "age only": _split_scores(al[:, None], yl, splits, age_probe),
                "PCA(50) + age": _split_scores(
                    np.c_[pca.transform(Xl), al], yl, splits, age_probe
                ),
                "brain-age reference": _split_scores(
                    np.c_[reg.transform(Xl), al], yl, splits, age_probe
                ),
            }
            if checkpoint is not None:
                checkpoint(rows, base_features)
    return _tables(rows, base_features, seed)


def _tables(rows, base_features, seed):
    """Rows with their paired difference to the base recipe, and baselines."""
    rng = np.random.default_rng(seed)
    base = next((r for r in rows if r["variant"] == "base"), None)
    if base is not None:
        for r in rows:
            for n in LABELS:
                d = np.subtract(r["scores"][str(n)], base["scores"][str(n)])
                r[f"diff_vs_base_{n}"] = _paired_ci(d, rng)
    baselines = {
        where: {k: {str(n): v[n] for n in LABELS} for k, v in table.items()}
        for where, table in base_features.get("baselines", {}).items()
    }
    return rows, baselines


def merge(out, parts, seed):
    """Add the rows of other runs (same recipe, seed and splits; e.g. run in
    parallel processes with ``--only``) to the JSON at ``out``."""
    payload = json.loads(Path(out).read_text())
    have = {r["variant"] for r in payload["rows"]}
    commands = payload.get("commands", [payload["command"]])
    for part in parts:
        other = json.loads(Path(part).read_text())
        if other["base"] != payload["base"] or other["splits"] != payload["splits"]:
            raise SystemExit(f"{part}: another recipe or number of splits")
        for row in other["rows"]:
            if row["variant"] not in have:
                payload["rows"].append(row)
                have.add(row["variant"])
        for where, table in other["baselines"].items():
            payload["baselines"].setdefault(where, table)
        commands.append(other["command"])
        payload["seconds"] += other["seconds"]
    order = list(VARIANTS)
    payload["rows"].sort(key=lambda r: order.index(r["variant"]))
    rng = np.random.default_rng(seed)
    base = next(r for r in payload["rows"] if r["variant"] == "base")
    for r in payload["rows"]:
        for n in LABELS:
            d = np.subtract(r["scores"][str(n)], base["scores"][str(n)])
            r[f"diff_vs_base_{n}"] = _paired_ci(d, rng)
    payload["commands"] = commands
    payload["complete"] = have >= set(VARIANTS)
    Path(out).write_text(json.dumps(payload, indent=1))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", default=None, help="variant names")
    parser.add_argument("--seed", type=int, default=0, help="pretraining seed")
    parser.add_argument("--splits", type=int, default=10)
    parser.add_argument("--cache", default=None, help="folder caching cohorts")
    parser.add_argument("--out", default=None, help="JSON output path")
    parser.add_argument("--list", action="store_true")
    parser.add_argument(
        "--merge",
        nargs="+",
        default=None,
        help="JSON files of other runs whose rows are added to --out",
    )
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(VARIANTS))
        return 0
    if args.merge:
        if not args.out:
            parser.error("--merge needs --out")
        merge(args.out, args.merge, args.seed)
        return 0
    names = list(VARIANTS) if args.only is None else args.only
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; see --list")
    if "base" not in names:
        names = ["base", *names]
    torch.set_num_threads(min(2, torch.get_num_threads()))
    t0 = time.perf_counter()
    command = " ".join(["python benchmarks/yaware_factors.py", *sys.argv[1:]])
    info = machine("cpu")

    def write(rows, base_features):
        rows, baselines = _tables(rows, base_features, args.seed)
        if not args.out:
            return
        payload = {
            "command": command,
            "date": time.strftime("%Y-%m-%d"),
            "machine": info,
            "base": {
                k: list(v) if isinstance(v, tuple) else v for k, v in BASE.items()
            },
            "n_unlabelled": N_UNLABELLED,
            "splits": args.splits,
            "seed": args.seed,
            "baselines": baselines,
            "rows": rows,
            "complete": len(rows) == len(names),
            "seconds": time.perf_counter() - t0,
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(payload, indent=1))
        tmp.replace(out)

    run(
        names,
        args.seed,
        args.splits,
        args.cache,
        lambda s: print(s, flush=True),
        checkpoint=write,
    )
    if args.out:
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
