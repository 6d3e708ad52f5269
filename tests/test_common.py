"""scikit-learn's common estimator checks on the tabular (MLP) configuration."""

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_cl3d import (
    ContrastiveSegmenter,
    DrasCLREncoder,
    GlobalLocalPretrainer,
    SimCLRPretrainer,
    WSPPretrainer,
    YAwarePretrainer,
)

SMALL = dict(
    backbone="mlp",
    backbone__hidden_dims=(8,),
    hidden_dim=8,
    projection_dim=4,
    max_epochs=2,
    batch_size=16,
    augmentation="none",
    random_state=0,
    verbose=0,
)

EXPECTED_FAILURES = {
    "check_no_attributes_set_in_init": (
        "skorch's NeuralNet.__init__ sets history_, initialized_ and "
        "virtual_params_ (skorch design, not ours)"
    ),
}
#: transform runs in batches: on some CPUs (measured on an Intel Xeon, not on
#: AMD Zen 3) float32 matrix products round differently for a batch of 16
#: and a batch of 4 rows, so a row's features move by ~6e-8 with its batch,
#: against the check's atol=1e-9
TABULAR_FAILURES = {
    **EXPECTED_FAILURES,
    "check_methods_sample_order_invariance": (
        "float32 rounding depends on the batch a row lands in (~6e-8 on some "
        "CPUs; the check's atol is 1e-9)"
    ),
}


def _expected_tabular_failures(estimator):
    return TABULAR_FAILURES


def _expected_failed_checks(estimator):
    return EXPECTED_FAILURES


@parametrize_with_checks(
    [
        YAwarePretrainer(**SMALL),
        SimCLRPretrainer(**SMALL),
        # tabular rows are single slices (position 0); y is the weak label
        WSPPretrainer(**SMALL),
    ],
    expected_failed_checks=_expected_tabular_failures,
)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)


@pytest.mark.parametrize("cls", [YAwarePretrainer, SimCLRPretrainer])
def test_default_constructible_with_paper_defaults(cls):
    est = cls()
    params = est.get_params()
    assert params["lr"] == 1e-4 and params["weight_decay"] == 5e-5
    assert params["backbone"] == "densenet121" and params["augmentation"] == "cutout"
    assert params["temperature"] == 0.1 and params["device"] == "auto"


# The volume-only estimators declare ``two_d_array=False`` (no tabular
# configuration makes sense: a U-Net on slices, CondConv on 3-D patches), so
# scikit-learn runs only the checks that need no 2-D data on them (cloning,
# parameters, tags, pickling of the unfitted estimator); their fit/transform
# behaviour is covered by tests/test_globallocal.py and tests/test_drasclr.py.
@parametrize_with_checks(
    [GlobalLocalPretrainer(), DrasCLREncoder(), ContrastiveSegmenter(n_classes=2)],
    expected_failed_checks=_expected_failed_checks,
)
def test_volume_only_estimators_pass_the_applicable_checks(estimator, check):
    check(estimator)
