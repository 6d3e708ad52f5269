"""The network of fine-tuning: a backbone, its successive blocks (what
``freeze=k`` freezes), a task head, and the classifier mode of the official
WSP networks."""

from __future__ import annotations

import torch
from torch import nn

from ._2d import ResNet2D, TinyNet2D

__all__ = ["FineTuneNetwork", "backbone_blocks", "official_classifier"]

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def backbone_blocks(backbone, exclude=()):
    """Split a backbone into its successive trainable blocks.

    The blocks are the backbone's parameterised sub-modules in forward
    order, found by descending through lone containers (``features`` of a
    DenseNet, ``layers`` of an MLP). A normalisation layer joins the block
    before it, and a DenseNet transition joins its dense block, so a
    DenseNet-121 has 5 blocks (stem, dense blocks 1-4), a ResNet-18 5 (stem,
    ``layer1``-``layer4``), a small CNN one per convolution and an MLP one
    per linear layer.

    Parameters
    ----------
    backbone : torch.nn.Module
    exclude : iterable of str, default=()
        Sub-module names (relative to ``backbone``) left out, e.g. a final
        BatchNorm added for fine-tuning.

    Returns
    -------
    blocks : list of list of str
        The sub-module names of each block, relative to ``backbone``.

    Examples
    --------
    >>> from sklearn_cl3d.nn import DenseNet3D
    >>> net = DenseNet3D(growth_rate=4, block_config=(1, 1), num_init_features=8)
    >>> backbone_blocks(net)
    [['features.conv0', 'features.norm0'], ['features.denseblock1', \
'features.transition1'], ['features.denseblock2']]
    """
    exclude = set(exclude)

    def has_params(module):
        return next(module.parameters(), None) is not None

    prefix, module = "", backbone
    while True:
        kids = [(n, m) for n, m in module.named_children() if has_params(m)]
        own = next(module.parameters(recurse=False), None)
        if len(kids) == 1 and own is None and next(kids[0][1].children(), None):
            prefix += kids[0][0] + "."
            module = kids[0][1]
            continue
        break
    blocks = []
    for name, child in kids:
        full = prefix + name
        if full in exclude:
            continue
        if blocks and (isinstance(child, _NORMS) or name.startswith("transition")):
            blocks[-1].append(full)
        else:
            blocks.append([full])
    return blocks


class FineTuneNetwork(nn.Module):
    """A backbone followed by a task head; frozen blocks stay in eval mode.

    Parameters
    ----------
    backbone : torch.nn.Module
        Encoder mapping a batch to ``(n, backbone.out_features)``.
    head : torch.nn.Module
        Maps the features to the outputs (class logits or regression values).
    frozen : tuple of str, default=()
        Names of backbone sub-modules whose parameters are frozen (``""``
        is the whole backbone): they are kept in eval mode (BatchNorm
        statistics and dropout fixed) even when the network trains.
    added : tuple of str, default=()
        Names of backbone sub-modules added for fine-tuning (freshly
        initialised, trained with the head's learning rate), e.g. the final
        BatchNorm ``"features.norm5"`` of a DenseNet in classifier mode.

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.nn import MLPEncoder
    >>> net = FineTuneNetwork(MLPEncoder(6, hidden_dims=(5,)), torch.nn.Linear(5, 2))
    >>> net(torch.zeros(3, 6)).shape
    torch.Size([3, 2])
    """

    def __init__(self, backbone, head, frozen=(), added=()):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.frozen = tuple(frozen)
        self.added = tuple(added)

    def train(self, mode=True):
        super().train(mode)
        for name in self.frozen:
            self.backbone.get_submodule(name).eval()
        for name in self.added:
            self.backbone.get_submodule(name).train(mode)
        return self

    def forward(self, x):
        """Return the head's output for the batch ``x``."""
        return self.head(self.backbone(x))


#: Width of the official TinyNet fc1 (config.py: 512 -> 256 -> 128).
_TINYNET_HIDDEN = 256


def official_classifier(backbone, head, hidden=None):
    """The classifier mode of the official WSP networks.

    The official code fine-tunes its network in "classifier" mode and copies
    every pretrained weight whose name and shape match:

    - after a :class:`~sklearn_cl3d.nn.TinyNet2D`, the classifier is
      ``fc1 -> ReLU -> fc2``, where ``fc1`` is the first layer of the
      pretraining's projection head (kept) and ``fc2`` the new class layer;
    - after a :class:`~sklearn_cl3d.nn.ResNet2D`, a BatchNorm on the last
      feature map (``last_bn``) comes before the pooling and the new linear
      layer. The pretraining's encoder mode never runs ``last_bn``, so the
      "pretrained" one is a fresh BatchNorm (the identity at start).

    Any other backbone keeps ``head``.

    Parameters
    ----------
    backbone : torch.nn.Module
        The (pretrained) backbone; a ResNet2D gets ``last_bn`` in place.
    head : torch.nn.Linear
        The new class layer, ``backbone.out_features -> n_outputs``.
    hidden : torch.nn.Linear or None, default=None
        The pretrained ``fc1`` (the projection head's first layer) for a
        TinyNet; None builds a fresh one of width 256 (the official
        configuration's).

    Returns
    -------
    head : torch.nn.Module
        The task head.
    added : tuple of str
        Names of the layers added to the backbone (``("last_bn",)`` for a
        ResNet2D).

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.nn import TinyNet2D
    >>> net = TinyNet2D(rep_dim=8)
    >>> head, added = official_classifier(net, torch.nn.Linear(8, 2))
    >>> head
    Sequential(
      (0): Linear(in_features=8, out_features=256, bias=True)
      (1): ReLU()
      (2): Linear(in_features=256, out_features=2, bias=True)
    )
    """
    if isinstance(backbone, TinyNet2D):
        if hidden is None:
            hidden = nn.Linear(backbone.out_features, _TINYNET_HIDDEN)
            nn.init.zeros_(hidden.bias)
        n_outputs = head.out_features
        fc2 = nn.Linear(hidden.out_features, n_outputs)
        nn.init.zeros_(fc2.bias)
        if isinstance(head, nn.Linear):
            fc2.to(head.weight.device)
        return nn.Sequential(hidden, nn.ReLU(), fc2), ()
    if isinstance(backbone, ResNet2D):
        if getattr(backbone, "last_bn", None) is not None:
            return head, ()
        norm = nn.BatchNorm2d(backbone.out_features)
        device = next(backbone.parameters(), torch.empty(0)).device
        backbone.last_bn = norm.to(device)
        return head, ("last_bn",)
    return head, ()
