"""Batched tensor augmentations for contrastive views.

All operations act on a floating-point batch of shape ``(B, C, *spatial)``
(1 to 3 spatial dimensions), draw their random parameters per sample from an
optional :class:`torch.Generator`, and return a new tensor of the same shape,
dtype and device. The in-plane geometric operations (:class:`AxisFlip`,
:class:`RandomAreaCrop`, :class:`RandomTranslate`, :class:`RandomRotate`)
reproduce the 2-D augmentations of the official WSP code;
:class:`RandomBrightnessContrast` and :class:`RandomCropResize` are the views
of global-local contrastive pretraining, :class:`RandomAffine3D` and
:class:`RandomContrast` (a gamma curve) those of DrasCLR;
:class:`SegmentationAugment` transforms images and label maps together
(segmentation fine-tuning).
:func:`make_augmentation` builds the pipelines of the official y-Aware and
WSP code from their names.
"""

from ._affine import AxisFlip, RandomAreaCrop, RandomRotate, RandomTranslate
from ._drasclr import RandomAffine3D, RandomContrast
from ._intensity import RandomBrightnessContrast, RandomCropResize
from ._presets import AUGMENTATION_PRESETS, make_augmentation
from ._segmentation import SegmentationAugment
from ._transforms import (
    Compose,
    Cutout,
    Flip,
    GaussianBlur,
    GaussianNoise,
    RandomApply,
    RandomResizedCrop,
    ZScore,
)

__all__ = [
    "ZScore",
    "Flip",
    "GaussianBlur",
    "GaussianNoise",
    "Cutout",
    "RandomResizedCrop",
    "AxisFlip",
    "RandomAreaCrop",
    "RandomTranslate",
    "RandomRotate",
    "RandomBrightnessContrast",
    "RandomCropResize",
    "RandomAffine3D",
    "RandomContrast",
    "SegmentationAugment",
    "RandomApply",
    "Compose",
    "make_augmentation",
    "AUGMENTATION_PRESETS",
]
