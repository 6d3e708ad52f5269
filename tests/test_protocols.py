"""The official-protocol recipes: every row sets what it says, and every row
whose official value differs from the default changes the behaviour."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _finetune_scores_checks import check_wsp_finetuning_balance_on_scores
from _gl_recipe_checks import (
    check_gl_gd_pairing,
    check_gl_uniform_draws,
    check_segmenter_augmentation,
    check_segmenter_checkpoint,
    check_segmenter_iterations,
)
from _wsp_recipe_checks import (
    check_wsp_balance_on_scores,
    check_wsp_best_checkpoint,
    check_wsp_finetuning_sampler,
    check_wsp_intensity,
    check_wsp_layers_kept,
    wsp_tinynet,  # noqa: F401 (a fixture)
)
from sklearn.base import clone

import sklearn_cl3d.protocols as protocols
from sklearn_cl3d import (
    ContrastiveSegmenter,
    DrasCLREncoder,
    FineTunedClassifier,
    FineTunedRegressor,
    GlobalLocalPretrainer,
    WSPPretrainer,
    YAwarePretrainer,
)
from sklearn_cl3d.data import SliceDataset
from sklearn_cl3d.estimators._device import resolve_precision
from sklearn_cl3d.nn import ResNet2D
from sklearn_cl3d.protocols import PROTOCOLS, ProtocolRecipe, official_protocol
from sklearn_cl3d.protocols._recipe import _fmt

CLASSES = {
    "YAwarePretrainer": YAwarePretrainer,
    "GlobalLocalPretrainer": GlobalLocalPretrainer,
    "WSPPretrainer": WSPPretrainer,
    "DrasCLREncoder": DrasCLREncoder,
    "ContrastiveSegmenter": ContrastiveSegmenter,
    "FineTunedClassifier": FineTunedClassifier,
}
ROWS = [
    (method, a)
    for method, recipe in PROTOCOLS.items()
    for a in recipe.aspects
    if a.parameter is not None
]


def _id(row):
    method, a = row
    return f"{method}-{a.estimator}.{a.parameter}"


def _differs(a):
    default = CLASSES[a.estimator]().get_params()[a.parameter]
    return default != a.official_value(CLASSES[a.estimator]())


# ------------------------------------------------------------ every row


@pytest.mark.parametrize("row", ROWS, ids=[_id(r) for r in ROWS])
def test_recipe_sets_a_valid_official_value(row):
    method, a = row
    recipe = official_protocol(method)
    est = CLASSES[a.estimator](random_state=7)
    out = recipe.apply(est)
    assert out is not est and not getattr(out, "initialized_", False)
    assert out.get_params()[a.parameter] == a.official_value(est)
    out._validate_params()  # scikit-learn's constraints accept the value
    assert out.random_state == 7  # parameters outside the recipe are kept


def test_tables_are_generated_from_the_recipes():
    for recipe in PROTOCOLS.values():
        rows = recipe.table()
        assert len(rows) == len(recipe.aspects)
        rst = recipe.to_rst()
        for a, row in zip(recipe.aspects, rows):
            assert a.aspect in rst
            if a.parameter is None:
                assert row["default"] == row["parameter"] == "—"
            else:
                cls = CLASSES[a.estimator]
                assert row["parameter"] == f"{a.estimator}.{a.parameter}"
                assert row["default"] == _fmt(cls().get_params()[a.parameter])
        assert rst in protocols.__doc__  # the module page shows every table
        assert recipe.gaps() == [a for a in recipe.aspects if a.parameter is None]


def test_bad_method_and_estimator():
    with pytest.raises(ValueError, match="method must be one of"):
        official_protocol("simclr")
    with pytest.raises(ValueError, match="sets parameters of"):
        official_protocol("wsp").apply(YAwarePretrainer())
    # a regressor takes the fine-tuning rows
    reg = official_protocol("wsp").apply(FineTunedRegressor())
    assert reg.lr == 1e-5 and reg.lr_schedule == "cosine"
    assert isinstance(official_protocol("yaware"), ProtocolRecipe)


# ------------------------------------- behaviour of the rows that differ


def _precision(est, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    return resolve_precision(est.precision, "cuda:0")


@pytest.mark.parametrize(
    "method, cls",
    [
        ("yaware", YAwarePretrainer),
        ("wsp", WSPPretrainer),
        ("globallocal", GlobalLocalPretrainer),
    ],
)
def test_default_precision_is_the_official_fp32_on_cuda(method, cls, monkeypatch):
    # the default follows the official code (no GPU A/B of bf16 yet);
    # "auto" opts in to bf16 on a CUDA device
    assert _precision(cls(), monkeypatch) == "fp32"
    assert _precision(cls(precision="auto"), monkeypatch) == "bf16"
    recipe = official_protocol(method)
    assert _precision(recipe.apply(cls(precision="auto")), monkeypatch) == "fp32"
    assert ContrastiveSegmenter().precision == "fp32"


GL_TINY = dict(
    channels=(4, 8, 8, 8),
    slice_size=32,
    n_decoder_blocks=1,
    hidden_dim=16,
    projection_dim=8,
    region_dim=8,
    device="cpu",
    random_state=0,
)


@pytest.fixture(scope="module")
def gl_volumes():
    rng = np.random.default_rng(0)
    return rng.normal(size=(6, 32, 32, 8)).astype(np.float32)


def _gl_built(recipe_applied, X):
    """The estimator with the recipe, built on X without training."""
    return (
        clone(recipe_applied)
        .set_params(max_epochs=0, local_epochs=0, n_iterations=None)
        .set_params(local_iterations=None)
        .fit(X)
    )


def check_gl_length(gl_volumes):
    recipe = official_protocol("globallocal")
    default = GlobalLocalPretrainer(**GL_TINY)
    official = recipe.apply(default)
    assert default._stage_epochs() == [("global", 100), ("local", 100)]
    assert official._stage_epochs() == [("global", 1), ("local", 1)]
    built = _gl_built(official, gl_volumes)
    built.set_params(n_iterations=10001, local_iterations=10001)
    ds = built._partition_dataset(built._as_dataset(gl_volumes, None, reset=False))
    for stage in ("global", "local"):
        built.__dict__["_stage"] = stage
        assert len(built.get_iterator(ds, training=True)) == 10001
    base = _gl_built(default, gl_volumes)
    assert len(base.get_iterator(ds, training=True)) == 6 // 3


def check_gl_intensity(gl_volumes):
    official = _gl_built(
        official_protocol("globallocal").apply(GlobalLocalPretrainer(**GL_TINY)),
        gl_volumes,
    )
    default = _gl_built(GlobalLocalPretrainer(**GL_TINY), gl_volumes)
    x0 = torch.rand(1, 1, 16, 16)
    x = torch.cat([x0, x0])
    gen = torch.Generator().manual_seed(0)
    same = official.local_augment_(x, generator=gen)
    assert torch.equal(same[0], same[1])  # one draw for the whole call
    out = default.local_augment_(x, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(out[0], out[1])  # one draw per image


def check_gl_negatives(gl_volumes):
    recipe = official_protocol("globallocal")
    ld = recipe.apply(GlobalLocalPretrainer(local="LD", **GL_TINY))
    lr = recipe.apply(GlobalLocalPretrainer(**GL_TINY))
    assert (ld.n_negatives, lr.n_negatives) == (4, 5)
    built = _gl_built(ld, gl_volumes)
    assert built.local_criterion_.n_negatives == 4
    # the default (None) builds the official value of each local strategy
    for local, expected in (("LD", 4), ("LR", 5)):
        est = GlobalLocalPretrainer(local=local, **GL_TINY)
        assert est.n_negatives is None
        assert _gl_built(est, gl_volumes).local_criterion_.n_negatives == expected


def check_segmenter_dice_only():
    torch.manual_seed(0)
    logits = torch.randn(3, 2, 8, 8)
    target = torch.randint(0, 2, (3, 8, 8))
    ce = F.cross_entropy(logits, target)

    def loss(est):
        # the criterion as the segmenter builds it from its parameters
        crit = est.criterion(
            dice_weight=est.dice_weight,
            ce_weight=est.ce_weight,
            include_background=est.include_background,
        )
        return crit(logits, target)

    dice_ce = ContrastiveSegmenter(n_classes=2, ce_weight=1.0)
    official = official_protocol("globallocal").apply(dice_ce)
    assert official.ce_weight == 0.0
    assert loss(dice_ce) - loss(official) == pytest.approx(float(ce), rel=1e-6)
    # the default is the official Dice-only loss (switched after a measured A/B)
    default = ContrastiveSegmenter(n_classes=2)
    assert loss(default) == pytest.approx(float(loss(official)), rel=1e-6)


def test_segmenter_default_loss_is_the_official_dice_only():
    check_segmenter_dice_only()


def check_wsp_steps():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 1, 20, 20, 10)).astype(np.float32)
    y = np.array([0, 1] * 6)
    tiny = dict(
        backbone=ResNet2D,
        backbone__blocks=(1, 1, 1, 1),
        backbone__widths=(4, 8, 8, 16),
        slice_size=24,
        hidden_dim=16,
        projection_dim=8,
        batch_size=6,
        max_epochs=0,
        augmentation="none",
        device="cpu",
        random_state=0,
    )
    default = WSPPretrainer(**tiny)
    # the tiny network and batch again; the recipe's steps_per_epoch stays
    official = official_protocol("wsp").apply(default).set_params(**tiny)
    assert official.steps_per_epoch == 156
    ds = SliceDataset(X, labels=y, fraction=0.7)
    for est, steps in ((default, 12 // 6), (official, 156)):
        est.fit(X, y)
        assert len(est.get_iterator(ds, training=True)) == steps


@pytest.fixture(scope="module")
def wsp_source():
    """A WSP slice encoder (untrained) and 4 volumes of 7 kept slices."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4, 1, 20, 20, 10)).astype(np.float32)
    y = np.array([0, 1, 0, 1])
    wsp = WSPPretrainer(
        backbone=ResNet2D,
        backbone__blocks=(1, 1, 1, 1),
        backbone__widths=(4, 8, 8, 16),
        slice_size=24,
        hidden_dim=16,
        projection_dim=8,
        batch_size=4,
        max_epochs=0,
        device="cpu",
        random_state=0,
    ).fit(X, y)
    return wsp, X, y


def check_wsp_finetuning(wsp_source):
    wsp, X, y = wsp_source
    common = dict(device="cpu", random_state=0)
    default = FineTunedClassifier(wsp, max_epochs=2, **common).fit(X, y)
    official = official_protocol("wsp").apply(FineTunedClassifier(wsp, **common))
    assert official.max_epochs == 40
    # fewer steps and 2 of the 4 volumes for the validation AUC
    official.set_params(steps_per_epoch=2, validation_fraction=0.5)
    short = clone(official).set_params(max_epochs=2).fit(X, y)
    g_def, g_off = default.optimizer_.param_groups[0], short.optimizer_.param_groups[0]
    # lr: constant 1e-4 against a cosine from 1e-5 down to 0 over the epochs
    assert g_def["lr"] == 1e-4
    assert g_off["initial_lr"] == 1e-5
    assert g_off["lr"] == pytest.approx(0.0, abs=1e-12)
    assert (g_def["weight_decay"], g_off["weight_decay"]) == (5e-5, 1e-5)
    # training slices per batch: 8 against one of each of the 2 volumes left
    # by the validation split (64 capped); see check_wsp_finetuning_sampler
    sizes = [b["train_batch_size"] for b in default.history[-1, "batches"]]
    assert sizes == [8, 8, 8, 4]
    sizes = [
        b["train_batch_size"]
        for b in short.history[-1, "batches"]
        if "train_batch_size" in b
    ]
    assert sizes == [2, 2]
    # the WSP views are applied in training
    assert default.augment_ is None and short.augment_ is not None
    x = torch.rand(4, 1, 24, 24)
    assert not torch.equal(
        short.augment_(x, generator=torch.Generator().manual_seed(1)), x
    )
    # the official length: 40 epochs
    assert len(official.fit(X, y).history) == 40 and len(default.history) == 2


#: a behaviour check for every (method, estimator, parameter) row whose
#: official value differs from the default
BEHAVIOUR = {
    ("globallocal", "GlobalLocalPretrainer", "n_negatives"): lambda r: (
        check_gl_negatives(r.getfixturevalue("gl_volumes"))
    ),
    **{
        ("globallocal", "GlobalLocalPretrainer", p): lambda r: check_gl_length(
            r.getfixturevalue("gl_volumes")
        )
        for p in ("n_iterations", "local_iterations")
    },
    ("globallocal", "GlobalLocalPretrainer", "gd_pairing"): lambda r: (
        check_gl_gd_pairing(r.getfixturevalue("gl_volumes"))
    ),
    ("globallocal", "GlobalLocalPretrainer", "slice_sampling"): lambda r: (
        check_gl_uniform_draws(r.getfixturevalue("gl_volumes"))
    ),
    ("globallocal", "ContrastiveSegmenter", "n_iterations"): lambda r: (
        check_segmenter_iterations()
    ),
    ("globallocal", "ContrastiveSegmenter", "augmentation"): lambda r: (
        check_segmenter_augmentation()
    ),
    ("globallocal", "ContrastiveSegmenter", "validation_fraction"): lambda r: (
        check_segmenter_checkpoint()
    ),
    ("globallocal", "GlobalLocalPretrainer", "official_intensity"): lambda r: (
        check_gl_intensity(r.getfixturevalue("gl_volumes"))
    ),
    ("globallocal", "ContrastiveSegmenter", "ce_weight"): lambda r: (
        check_segmenter_dice_only()
    ),
    ("wsp", "WSPPretrainer", "steps_per_epoch"): lambda r: check_wsp_steps(),
    ("wsp", "WSPPretrainer", "normalize"): lambda r: check_wsp_intensity(),
    ("wsp", "WSPPretrainer", "balance_on"): lambda r: check_wsp_balance_on_scores(
        r.getfixturevalue("monkeypatch")
    ),
    **{
        ("wsp", "FineTunedClassifier", p): lambda r: check_wsp_finetuning_sampler(
            r.getfixturevalue("wsp_source")
        )
        for p in ("slice_sampling", "steps_per_epoch")
    },
    ("wsp", "FineTunedClassifier", "balance_on"): lambda r: (
        check_wsp_finetuning_balance_on_scores(
            r.getfixturevalue("wsp_source"), r.getfixturevalue("monkeypatch")
        )
    ),
    ("wsp", "FineTunedClassifier", "normalize"): lambda r: check_wsp_intensity(
        finetuner=r.getfixturevalue("wsp_source")
    ),
    ("wsp", "FineTunedClassifier", "head"): lambda r: check_wsp_layers_kept(
        r.getfixturevalue("wsp_source"), r.getfixturevalue("wsp_tinynet")
    ),
    ("wsp", "FineTunedClassifier", "keep_best"): lambda r: check_wsp_best_checkpoint(
        r.getfixturevalue("wsp_source"), r.getfixturevalue("monkeypatch")
    ),
    **{
        ("wsp", "FineTunedClassifier", p): lambda r: check_wsp_finetuning(
            r.getfixturevalue("wsp_source")
        )
        for p in (
            "lr",
            "weight_decay",
            "lr_schedule",
            "max_epochs",
            "batch_size",
            "augmentation",
        )
    },
}
DIFFERING = [r for r in ROWS if _differs(r[1])]


@pytest.mark.parametrize("row", DIFFERING, ids=[_id(r) for r in DIFFERING])
def test_recipe_changes_the_behaviour(row, request):
    method, a = row
    key = (method, a.estimator, a.parameter)
    assert key in BEHAVIOUR, f"no behaviour check for the row {key}"
    BEHAVIOUR[key](request)


def test_ld_negatives_follow_the_local_strategy(gl_volumes):
    check_gl_negatives(gl_volumes)
