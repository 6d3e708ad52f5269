"""Neural-network building blocks: backbones, projection head and registry.

Backbones map a batch to ``(n, out_features)`` features and expose an int
``out_features`` attribute:

- :class:`DenseNet3D` and :func:`densenet121`: the 3-D DenseNet of y-Aware
  contrastive pretraining;
- :class:`SmallCNN3D`: a small, fast 3-D CNN for CPU use;
- :class:`TinyNet2D`: the plain 2-D CNN that is the default WSP slice
  encoder (inputs of at least 156x156 pixels);
- :class:`ResNet2D` and :func:`resnet18_2d`: the 2-D ResNet-18 WSP encoder,
  with dropout after each stage;
- :class:`MLPEncoder`: a multilayer perceptron for tabular features.

:class:`ProjectionHead` is the two-layer y-Aware head, and
:class:`ContrastiveModel` chains a backbone and a head.
:class:`CondConv3d` (functional form in :mod:`.functional`) is DrasCLR's
location-routed expert convolution.
:class:`DrasCLRNet` is DrasCLR's network built from it (with its MoCo-v2
head), and :class:`DrasCLRMoCo` adds the momentum encoder and the
per-landmark queues. :class:`UNet`, with its heads
:class:`GlobalHead` and :class:`LocalHead`, is the segmentation network of
global-local contrastive pretraining, and :class:`GlobalLocalNet` holds the
three.
:class:`SliceSetEncoder` (with :class:`UNetEncoder`) and
:class:`LandmarkSetEncoder` encode the slices or landmark patches of a volume
and pool them (:class:`ItemPooling`) into one vector per volume: the
backbones a fine-tuner builds from those two pretrainers.
:class:`FineTuneNetwork` chains a backbone and a task head, and
:func:`backbone_blocks` lists a backbone's successive blocks.
:func:`build_backbone` builds a backbone from a name in :data:`BACKBONES`, a
class or an instance.
"""

from . import functional
from ._2d import ResNet2D, TinyNet2D, resnet18_2d
from ._condconv import CondConv3d
from ._densenet import DenseNet3D, densenet121
from ._drasclr import DrasCLRMoCo, DrasCLRNet, queue_nbytes
from ._finetune import FineTuneNetwork, backbone_blocks
from ._globallocal import GlobalLocalNet
from ._heads import LAYERS, ContrastiveModel, ProjectionHead
from ._pooled import (
    ITEM_POOLINGS,
    ItemPooling,
    LandmarkSetEncoder,
    SliceSetEncoder,
    UNetEncoder,
)
from ._registry import BACKBONES, build_backbone
from ._small import MLPEncoder, SmallCNN3D
from ._unet import GlobalHead, LocalHead, UNet

__all__ = [
    "BACKBONES",
    "CondConv3d",
    "LAYERS",
    "ContrastiveModel",
    "DenseNet3D",
    "DrasCLRMoCo",
    "DrasCLRNet",
    "FineTuneNetwork",
    "GlobalHead",
    "GlobalLocalNet",
    "ITEM_POOLINGS",
    "ItemPooling",
    "LandmarkSetEncoder",
    "LocalHead",
    "MLPEncoder",
    "ProjectionHead",
    "ResNet2D",
    "SliceSetEncoder",
    "SmallCNN3D",
    "TinyNet2D",
    "UNet",
    "UNetEncoder",
    "backbone_blocks",
    "build_backbone",
    "densenet121",
    "functional",
    "queue_nbytes",
    "resnet18_2d",
]
