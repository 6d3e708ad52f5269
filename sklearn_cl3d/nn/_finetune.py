"""The network of fine-tuning: a backbone, its successive blocks (what
``freeze=k`` freezes) and a task head."""

from __future__ import annotations

from torch import nn

__all__ = ["FineTuneNetwork", "backbone_blocks"]

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
