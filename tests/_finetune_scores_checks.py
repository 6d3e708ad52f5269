"""Behaviour check of the WSP fine-tuning row ``balance_on="scores"`` (used
by test_protocols.py and test_finetune_scores.py)."""

import numpy as np
import torch

import sklearn_cl3d.estimators._finetune_select as select_module
from sklearn_cl3d import FineTunedClassifier
from sklearn_cl3d.protocols import official_protocol


def spy_samplers(monkeypatch):
    """Record every balanced volume sampler the fine-tuners build."""
    made = []

    class Spy(select_module.BalancedVolumeBatchSampler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(select_module, "BalancedVolumeBatchSampler", Spy)
    return made


def first_draw_frequencies(sampler, n_volumes, n_batches=4000, seed=0):
    """How often each volume is drawn first in a batch (P proportional to
    the sampler's weights)."""
    sampler.n_batches = n_batches
    sampler.generator = torch.Generator().manual_seed(seed)
    draws = np.array([b[0] // sampler.n_kept for b in sampler])
    return np.bincount(draws, minlength=n_volumes) / len(draws)


def naive_balanced(labels):
    """P(volume) = 1 / count(its label), normalised over the volumes."""
    labels = list(labels)
    w = np.array([1.0 / labels.count(v) for v in labels])
    return w / w.sum()


def check_wsp_finetuning_balance_on_scores(wsp_source, monkeypatch):
    """The recipe's sampler follows 1 / count(raw score), the default's
    1 / count(target class)."""
    wsp, X, y = wsp_source
    scores = np.array([0, 4, 0, 3])  # y = [0, 1, 0, 1] is score >= 3
    assert np.array_equal(y, (scores >= 3).astype(int))
    common = dict(device="cpu", random_state=0, verbose=0)
    official = official_protocol("wsp").apply(FineTunedClassifier(wsp, **common))
    assert official.balance_on == "scores"
    official.set_params(max_epochs=1, steps_per_epoch=1, keep_best=None)
    default = FineTunedClassifier(
        wsp, slice_sampling="balanced", max_epochs=1, steps_per_epoch=1, **common
    )
    made = spy_samplers(monkeypatch)
    probs = {}
    for name, est in (("official", official), ("default", default)):
        made.clear()
        est.fit(X, y, scores=scores)
        probs[name] = first_draw_frequencies(made[-1], len(y))
    np.testing.assert_allclose(probs["official"], naive_balanced(scores), atol=0.03)
    np.testing.assert_allclose(probs["default"], naive_balanced(y), atol=0.03)
    assert (official.balance_labels_, default.balance_labels_) == ("scores", "target")
