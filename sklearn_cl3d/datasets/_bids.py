"""Writing the generated cohorts as BIDS datasets.

The layout is the one :func:`sklearn_cl3d.data.read_bids` reads::

    out_dir/
        dataset_description.json
        participants.tsv
        sub-0001/anat/sub-0001_T1w.nii.gz
        ...
        derivatives/<pipeline>/          (masks and other derived images)
            dataset_description.json
            sub-0001/anat/sub-0001_desc-lung_mask.nii.gz
"""

from __future__ import annotations

import json
import os

__all__ = ["bids_image_path", "write_dataset_description"]

BIDS_VERSION = "1.9.0"


def bids_image_path(root, participant_id, suffix, entities=(), datatype="anat"):
    """``root/sub-X/<datatype>/sub-X[_key-value...]_<suffix>.nii.gz``, its
    folder created."""
    folder = os.path.join(root, participant_id, datatype)
    os.makedirs(folder, exist_ok=True)
    name = "_".join([participant_id, *(f"{k}-{v}" for k, v in entities), suffix])
    return os.path.join(folder, f"{name}.nii.gz")


def write_dataset_description(root, name, generator, *, derivative=False):
    """Write ``dataset_description.json`` (a derivative names its generator)."""
    description = {
        "Name": name,
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative" if derivative else "raw",
        "GeneratedBy": [
            {
                "Name": "sklearn_cl3d",
                "Description": f"synthetic data from {generator}",
            }
        ],
    }
    os.makedirs(root, exist_ok=True)
    with open(
        os.path.join(root, "dataset_description.json"), "w", encoding="utf-8"
    ) as fh:
        json.dump(description, fh, indent=2)
        fh.write("\n")
