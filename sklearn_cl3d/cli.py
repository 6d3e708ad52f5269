"""Command line: ``sklearn-cl3d demo`` and ``sklearn-cl3d benchmark`` (also
``python -m sklearn_cl3d ...``)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _int(text, low, what):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
    return value


def _positive_int(text):
    return _int(text, 1, "a positive integer")


def _seed(text):
    return _int(text, 0, "a seed between 0 and 2**32 - 1")


def _label_count(text):
    # a stratified draw and a logistic regression need a few of each class
    return _int(text, 10, "a number of labelled subjects >= 10")


def build_parser():
    """Return the argument parser of the ``sklearn-cl3d`` command."""
    parser = argparse.ArgumentParser(
        prog="sklearn-cl3d",
        description="Contrastive pretraining for 3D medical images.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="pretrain y-Aware, SimCLR and a random encoder (several seeds) on the "
        "built-in brain cohort, compare linear probes with voxel baselines by "
        "number of labels, with paired bootstrap CIs",
    )
    demo.add_argument(
        "--preset",
        choices=["cpu", "paper"],
        default="cpu",
        help="cpu: small CNN on 8 mm volumes, about 10 minutes on 2 cores "
        "(default); paper: DenseNet-121 with the paper's settings at 2 mm, for a "
        "GPU",
    )
    demo.add_argument(
        "--n-unlabelled",
        type=_positive_int,
        default=None,
        help="subjects for pretraining (default 600)",
    )
    demo.add_argument(
        "--labels",
        type=_label_count,
        nargs="+",
        default=None,
        help="numbers of labelled subjects (default: 100 200 400)",
    )
    demo.add_argument("--epochs", type=_positive_int, default=None)
    demo.add_argument(
        "--seeds",
        type=_positive_int,
        default=None,
        help="pretraining seeds per method (default 3)",
    )
    demo.add_argument(
        "--splits",
        type=_positive_int,
        default=None,
        help="stratified shuffle splits of the probe evaluation (default 10)",
    )
    demo.add_argument("--resolution", type=int, choices=[2, 4, 8], default=None)
    demo.add_argument("--device", default="auto")
    demo.add_argument("--seed", type=_seed, default=0, help="random seed (>= 0)")
    demo.add_argument("--out", default="demo_output", help="output folder")
    _add_benchmark(sub)
    return parser


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction, got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), got {text}")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _add_benchmark(sub):
    from .evaluation import BENCHMARK_METHODS

    bench = sub.add_parser(
        "benchmark",
        help="methods x label counts x pretraining seeds on your table or BIDS "
        "folder (or the built-in cohort): tidy results, paired differences "
        "with 95%% CIs, a plot; resumable",
        description="Benchmark self-supervised pretraining against baselines "
        "(covariates only, voxel PCA, a random network) on your data: linear "
        "probes trained on growing numbers of labelled subjects over shuffle "
        "splits and pretraining seeds. Writes results.csv, summary.csv, "
        "differences.csv, results.json and label_efficiency.png to --out. "
        "Rerunning with the same --out skips the (method, seed) pairs already "
        "in results.json, so more seeds, splits or methods extend a run.",
        epilog="Examples: sklearn-cl3d benchmark --epochs 5 --seeds 2 (built-in "
        "cohort); sklearn-cl3d benchmark --data bids_root --target diagnosis "
        "--proxy age --covariates age; sklearn-cl3d benchmark --data "
        "cohort.csv --path-column image --target dx --covariates",
    )
    data = bench.add_argument_group("data")
    data.add_argument(
        "--data",
        metavar="PATH",
        default=None,
        help="a BIDS folder (participants.tsv + sub-*/anat/*_T1w.nii.gz) or a "
        ".csv/.tsv table with one image path per row; default: the built-in "
        "brain cohort, written to OUT/cohort as BIDS",
    )
    data.add_argument(
        "--target",
        metavar="COLUMN",
        default=None,
        help="column to predict (rows without a value are unlabelled); "
        "required with --data (built-in: diagnosis)",
    )
    data.add_argument(
        "--proxy",
        metavar="COLUMN",
        nargs="+",
        default=None,
        help="metadata column(s) of y-Aware's kernel (built-in: age); without "
        "it, y-Aware is not run",
    )
    data.add_argument(
        "--covariates",
        metavar="COLUMN",
        nargs="*",
        default=None,
        help="numeric columns added to every probe, and the 'covariates only' "
        "baseline (built-in: age); give the option with no column for none",
    )
    data.add_argument(
        "--path-column",
        metavar="COLUMN",
        default="path",
        help="table column of the image paths",
    )
    data.add_argument("--suffix", default="T1w", help="BIDS suffix of the images")
    data.add_argument(
        "--session",
        metavar="LABEL",
        default=None,
        help="BIDS session to read (one image per subject)",
    )
    data.add_argument(
        "--pretrain-on",
        choices=["auto", "unlabelled", "all"],
        default="auto",
        help="subjects that pretrain the networks and fit the PCA: those "
        "without a target, all of them (test images then seen without their "
        "labels), or auto: unlabelled when there are some (default)",
    )
    data.add_argument(
        "--n-unlabelled",
        metavar="N",
        type=_positive_int,
        default=300,
        help="built-in cohort: subjects without a diagnosis (default 300)",
    )
    data.add_argument(
        "--resolution",
        type=int,
        choices=[2, 4, 8],
        default=8,
        help="built-in cohort: voxel size in mm (default 8)",
    )
    design = bench.add_argument_group("design")
    design.add_argument(
        "--methods",
        metavar="METHOD",
        nargs="+",
        choices=list(BENCHMARK_METHODS),
        default=None,
        help="among %(choices)s; default: every method the columns allow",
    )
    design.add_argument(
        "--labels",
        metavar="N",
        type=_int_at_least_2,
        nargs="+",
        default=[25, 50, 100],
        help="numbers of labelled training subjects (default: 25 50 100)",
    )
    design.add_argument(
        "--seeds",
        metavar="N",
        type=_positive_int,
        default=3,
        help="pretraining seeds per network: 0 .. N-1 (default 3)",
    )
    design.add_argument(
        "--splits",
        metavar="N",
        type=_positive_int,
        default=10,
        help="shuffle splits of the labelled subjects (default 10)",
    )
    design.add_argument(
        "--test-size",
        metavar="FRACTION",
        type=_fraction,
        default=0.25,
        help="held-out fraction of the labelled subjects (default 0.25)",
    )
    design.add_argument(
        "--fine-tune",
        action="store_true",
        help="also fine-tune the networks (the random one: from scratch)",
    )
    design.add_argument(
        "--scoring",
        metavar="NAME",
        default=None,
        help="scikit-learn scorer (default: roc_auc or r2)",
    )
    nets = bench.add_argument_group("pretraining")
    nets.add_argument(
        "--epochs", metavar="N", type=_non_negative_int, default=30, help="default 30"
    )
    nets.add_argument(
        "--backbone",
        metavar="NAME",
        default=None,
        help="network (default small3d, as in the demo)",
    )
    nets.add_argument("--batch-size", metavar="N", type=_positive_int, default=None)
    nets.add_argument("--lr", type=_positive_float, default=None)
    nets.add_argument(
        "--sigma",
        type=_positive_float,
        default=5.0,
        help="y-Aware kernel width in the proxy's units (default 5)",
    )
    nets.add_argument(
        "--components",
        metavar="N",
        type=_positive_int,
        default=50,
        help="voxel PCA components (default 50)",
    )
    nets.add_argument("--device", default="auto")
    run = bench.add_argument_group("run")
    run.add_argument("--seed", type=_seed, default=0, help="random seed (>= 0)")
    run.add_argument(
        "--out", metavar="FOLDER", default="benchmark_output", help="output folder"
    )
    run.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="overwrite the results in --out instead of extending them",
    )
    run.add_argument(
        "-q", "--quiet", action="store_true", help="print nothing but errors"
    )
    run.add_argument(
        "-v", "--verbose", action="store_true", help="also print every epoch"
    )


def _int_at_least_2(text):
    return _int(text, 2, "an integer >= 2")


def _non_negative_int(text):
    return _int(text, 0, "an integer >= 0")


def _run_benchmark(args):
    from .evaluation import benchmark
    from .evaluation._benchmark import _InputError

    params = {
        k: v
        for k, v in (
            ("backbone", args.backbone),
            ("batch_size", args.batch_size),
            ("lr", args.lr),
        )
        if v is not None
    }
    try:
        benchmark(
            args.data,
            target=args.target,
            proxy=args.proxy,
            covariates=args.covariates,
            path_column=args.path_column,
            suffix=args.suffix,
            session=args.session,
            methods=args.methods,
            n_labels=args.labels,
            seeds=args.seeds,
            n_repeats=args.splits,
            test_size=args.test_size,
            protocols=("linear_probe", "fine_tune")
            if args.fine_tune
            else "linear_probe",
            scoring=args.scoring,
            pretrain_on=args.pretrain_on,
            max_epochs=args.epochs,
            sigma=args.sigma,
            pretrainer_params=params,
            n_components=args.components,
            n_unlabelled=args.n_unlabelled,
            resolution=args.resolution,
            device=args.device,
            random_state=args.seed,
            out_dir=args.out,
            resume=args.resume,
            verbose=0 if args.quiet else 2 if args.verbose else 1,
        )
    except _InputError as exc:  # before any fit: a usage error
        print(f"sklearn-cl3d benchmark: error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv=None):
    """Entry point of the ``sklearn-cl3d`` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "benchmark":
        return _run_benchmark(args)
    if args.command == "demo":
        from ._demo import DemoConfigError, run_demo

        def log(text):
            print(text, flush=True)

        try:
            run_demo(
                preset=args.preset,
                n_unlabelled=args.n_unlabelled,
                label_counts=None if args.labels is None else tuple(args.labels),
                max_epochs=args.epochs,
                resolution=args.resolution,
                n_seeds=args.seeds,
                n_repeats=args.splits,
                device=args.device,
                random_state=args.seed,
                out_dir=args.out,
                log=log,
            )
        except DemoConfigError as exc:  # before any work: a usage error
            print(f"sklearn-cl3d demo: error: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
