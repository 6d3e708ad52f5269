"""Input handling: arrays, image files and images, lazy datasets,
preprocessing transformers, and validation; paths and metadata from tables,
BIDS datasets, folders and glob patterns."""

from ._cache import CacheWarning
from ._dataset import VolumeDataset, as_volume_dataset, is_volume_collection
from ._dicom import dicomdir_series, read_dicom_series
from ._io import SUPPORTED_EXTENSIONS, load_volume
from ._landmarks import landmark_locations, landmark_neighbors, make_landmarks
from ._lung_pipeline import prepare_lung_ct
from ._lungmask import LungMask, segment_lungs
from ._nrrd import read_nrrd
from ._partitions import (
    PartitionBatchSampler,
    PartitionSliceDataset,
    partition_bounds,
)
from ._patches import (
    LandmarkPatchDataset,
    LocationMajorBatchSampler,
    extract_patches,
    map_corners,
)
from ._paths import expand_paths
from ._percentile import PercentileScaling
from ._preprocessing import (
    CropOrPad,
    HUWindow,
    IntensityZScore,
    PreprocessingChain,
    ReorientToRAS,
    Resample,
    make_preprocessing,
)
from ._registration import register_affine
from ._slices import (
    BalancedVolumeBatchSampler,
    SliceDataset,
    central_slice_range,
    slice_positions,
)
from ._tables import read_bids, read_table
from ._validation import check_input_shape, check_metadata, check_volumes

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "BalancedVolumeBatchSampler",
    "CacheWarning",
    "PartitionBatchSampler",
    "PartitionSliceDataset",
    "partition_bounds",
    "SliceDataset",
    "LandmarkPatchDataset",
    "LocationMajorBatchSampler",
    "extract_patches",
    "map_corners",
    "LungMask",
    "segment_lungs",
    "register_affine",
    "prepare_lung_ct",
    "central_slice_range",
    "slice_positions",
    "CropOrPad",
    "HUWindow",
    "PercentileScaling",
    "IntensityZScore",
    "PreprocessingChain",
    "ReorientToRAS",
    "Resample",
    "VolumeDataset",
    "as_volume_dataset",
    "check_input_shape",
    "check_metadata",
    "check_volumes",
    "expand_paths",
    "is_volume_collection",
    "landmark_locations",
    "landmark_neighbors",
    "load_volume",
    "make_landmarks",
    "make_preprocessing",
    "read_bids",
    "dicomdir_series",
    "read_dicom_series",
    "read_nrrd",
    "read_table",
]
