"""Per-class Dice of global-local fine-tuning: why the tissue task shows nothing.

One pretraining seed and one labelled volume; prints the Dice of each class
on the 10 test volumes for random, global-only and global + local
initialisations after ``--steps`` fine-tuning steps. Same cohort, split and
settings as ``method_effects.py globallocal`` (``--target tissue``: CSF, GM,
WM; ``--target hemisphere``: GM and WM of each hemisphere, CSF as
background). Outputs are kept in ``measured/globallocal_diagnostic.txt``::

    python benchmarks/globallocal_diagnostic.py --target tissue --steps 100 300
    python benchmarks/globallocal_diagnostic.py --target hemisphere --steps 100
"""

import argparse
import copy
import time

import numpy as np

from sklearn_cl3d import ContrastiveSegmenter, GlobalLocalPretrainer
from sklearn_cl3d.datasets import make_brain_cohort
from sklearn_cl3d.metrics import dice_scores

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--target", choices=["tissue", "hemisphere"], default="tissue")
parser.add_argument("--steps", type=int, nargs="+", default=[100, 300])
args = parser.parse_args()

cohort = make_brain_cohort(70, resolution=4, random_state=0, return_labels=True)
X, labels = cohort.volumes, cohort.labels
n_classes = 4
if args.target == "hemisphere":
    right = (np.arange(labels.shape[1]) >= labels.shape[1] // 2)[None, :, None, None]
    labels = np.where(labels >= 2, 2 * (labels - 2) + 1 + right, 0)
    n_classes = 5
net = dict(channels=(8, 16, 32, 64, 64, 64), slice_size=64)
g = GlobalLocalPretrainer(
    strategy="GD",
    local=None,
    n_partitions=4,
    max_epochs=20,
    steps_per_epoch=25,
    device="cpu",
    verbose=0,
    random_state=0,
    **net,
).fit(X[:40])
gl = copy.deepcopy(g).set_params(local="LR", max_epochs=0, local_epochs=20)
gl.partial_fit(X[:40])
X_pool, y_pool, X_test, y_test = X[40:60], labels[40:60], X[60:], labels[60:]
for steps in args.steps:
    for name, pretrained in (("random", None), ("global", g), ("global+local", gl)):
        epochs = max(1, round(steps / (-(-X.shape[-1] // 8))))
        tic = time.time()
        seg = ContrastiveSegmenter(
            pretrained,
            n_classes=n_classes,
            max_epochs=epochs,
            batch_size=8,
            bn_momentum=0.1,
            device="cpu",
            verbose=0,
            random_state=0,
            **({} if pretrained is not None else net),
        ).fit(X_pool[:1], y_pool[:1])
        dice = dice_scores(y_test, seg.predict(X_test), n_classes).mean(0)
        print(
            steps,
            name,
            np.round(dice, 3),
            round(float(dice.mean()), 3),
            f"{time.time() - tic:.0f}s",
            flush=True,
        )
