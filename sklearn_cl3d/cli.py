"""Command line: ``sklearn-cl3d demo`` (also ``python -m sklearn_cl3d demo``)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def build_parser():
    """Return the argument parser of the ``sklearn-cl3d`` command."""
    parser = argparse.ArgumentParser(
        prog="sklearn-cl3d",
        description="Contrastive pretraining for 3D medical images.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="pretrain y-Aware, SimCLR and a random encoder on the built-in brain "
        "cohort and compare linear probes by number of labels",
    )
    demo.add_argument(
        "--preset",
        choices=["cpu", "paper"],
        default="cpu",
        help="cpu: small CNN, minutes on 2 cores (default); paper: DenseNet-121 "
        "with the paper's settings, for a GPU",
    )
    demo.add_argument("--n-unlabelled", type=_positive_int, default=None)
    demo.add_argument(
        "--labels",
        type=_positive_int,
        nargs="+",
        default=None,
        help="numbers of labelled subjects (default: 100 200 400)",
    )
    demo.add_argument("--epochs", type=_positive_int, default=None)
    demo.add_argument("--resolution", type=int, choices=[2, 4], default=None)
    demo.add_argument("--device", default="auto")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="demo_output", help="output folder")
    return parser


def main(argv=None):
    """Entry point of the ``sklearn-cl3d`` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from ._demo import run_demo

        def log(text):
            print(text, flush=True)

        run_demo(
            preset=args.preset,
            n_unlabelled=args.n_unlabelled,
            label_counts=None if args.labels is None else tuple(args.labels),
            max_epochs=args.epochs,
            resolution=args.resolution,
            device=args.device,
            random_state=args.seed,
            out_dir=args.out,
            log=log,
        )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
