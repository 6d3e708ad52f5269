"""Neural-network building blocks: backbones, projection head and registry.

Backbones map a batch to ``(n, out_features)`` features and expose an int
``out_features`` attribute:

- :class:`DenseNet3D` and :func:`densenet121`: the 3-D DenseNet of y-Aware
  contrastive pretraining;
- :class:`SmallCNN3D`: a small, fast 3-D CNN for CPU use;
- :class:`MLPEncoder`: a multilayer perceptron for tabular features.

:class:`ProjectionHead` is the two-layer y-Aware head, and
:class:`ContrastiveModel` chains a backbone and a head.
:func:`build_backbone` builds a backbone from a name in :data:`BACKBONES`, a
class or an instance.
"""

from ._densenet import DenseNet3D, densenet121
from ._heads import LAYERS, ContrastiveModel, ProjectionHead
from ._registry import BACKBONES, build_backbone
from ._small import MLPEncoder, SmallCNN3D

__all__ = [
    "BACKBONES",
    "LAYERS",
    "ContrastiveModel",
    "DenseNet3D",
    "MLPEncoder",
    "ProjectionHead",
    "SmallCNN3D",
    "build_backbone",
    "densenet121",
]
