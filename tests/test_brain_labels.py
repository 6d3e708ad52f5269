"""Tissue label maps of the built-in brain cohort (``return_labels=True``)."""

import numpy as np
import pytest

pytest.importorskip("nilearn")

from sklearn_cl3d.datasets import make_brain_cohort  # noqa: E402


@pytest.mark.parametrize("resolution", [4, 8])
def test_labels_leave_images_unchanged_and_follow_tissue(resolution):
    plain = make_brain_cohort(3, resolution=resolution, random_state=1)
    data = make_brain_cohort(
        3, resolution=resolution, random_state=1, return_labels=True
    )
    assert not hasattr(plain, "labels")
    np.testing.assert_array_equal(data.volumes, plain.volumes)
    np.testing.assert_array_equal(data.age, plain.age)
    labels = data.labels
    assert labels.shape == (3, *data.volumes.shape[2:])
    assert labels.dtype == np.int64
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    image = data.volumes[:, 0]
    # outside the brain mask the T1 image is exactly 0 (skull-stripped)
    if resolution == 4:
        assert np.all(image[labels == 0] == 0)
        assert np.all(image[labels > 0] > 0)
    # within a subject, WM is brighter than GM, GM brighter than CSF on T1
    for i in range(3):
        means = [image[i][labels[i] == k].mean() for k in (1, 2, 3)]
        assert means[0] < means[1] < means[2]


def test_label_volumes_match_true_tissue_volumes():
    data = make_brain_cohort(4, resolution=4, random_state=2, return_labels=True)
    voxel_ml = 4.0**3 / 1000.0
    for k, key in ((2, "gm_ml"), (3, "wm_ml")):
        counted = (data.labels == k).sum(axis=(1, 2, 3)) * voxel_ml
        # hard labels of partial-volume fractions: same order of magnitude
        np.testing.assert_allclose(counted, data[key], rtol=0.5)
        # and they rank the subjects the same way as the true volumes
        assert np.corrcoef(counted, data[key])[0, 1] > 0.5
