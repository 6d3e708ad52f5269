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
        help="pretrain y-Aware and SimCLR encoders on a toy cohort and compare "
        "linear probes",
    )
    demo.add_argument("--n-unlabelled", type=_positive_int, default=300)
    demo.add_argument(
        "--labels",
        type=_positive_int,
        nargs="+",
        default=[50, 100, 200],
        help="numbers of labelled subjects",
    )
    demo.add_argument("--size", type=_positive_int, default=16, help="volume edge")
    demo.add_argument("--epochs", type=_positive_int, default=10)
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
            n_unlabelled=args.n_unlabelled,
            label_counts=tuple(args.labels),
            size=args.size,
            max_epochs=args.epochs,
            random_state=args.seed,
            out_dir=args.out,
            log=log,
        )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
