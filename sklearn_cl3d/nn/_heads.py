"""Projection head and the backbone + head model used for contrastive pretraining.

The y-Aware head is a two-layer MLP without BatchNorm ("MLP(2)"):
``Linear(in, hidden) -> ReLU -> Linear(hidden, out)``. Downstream features
can be read at three places (see ``specs/yaware.md`` section 2.3): the pooled
backbone output, the head's hidden layer (before its ReLU) or the projection.
"""

from __future__ import annotations

import torch
from torch import nn

from ._densenet import _check_positive_int

__all__ = ["ProjectionHead", "ContrastiveModel", "LAYERS"]

#: Names accepted by :meth:`ContrastiveModel.encode`.
LAYERS = ("backbone", "hidden", "projection")


class ProjectionHead(nn.Module):
    """Two-layer MLP projection head, ``Linear -> ReLU -> Linear``, without BN.

    Parameters
    ----------
    in_features : int
        Dimension of the backbone features.
    hidden_dim : int, default=512
        Width of the hidden layer.
    out_dim : int, default=128
        Dimension of the projection fed to the contrastive loss.

    Attributes
    ----------
    hidden_representation : torch.nn.Linear
        First layer, ``in_features -> hidden_dim``.
    head_projection : torch.nn.Linear
        Second layer, ``hidden_dim -> out_dim``.
    out_features : int
        Equal to ``out_dim``.

    Notes
    -----
    Both biases are initialised to zero; weights keep the PyTorch default.
    The sub-module names match the reference y-Aware implementation.

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.nn import ProjectionHead
    >>> head = ProjectionHead(16, hidden_dim=8, out_dim=4)
    >>> head(torch.zeros(2, 16)).shape
    torch.Size([2, 4])
    >>> hidden, z = head(torch.zeros(2, 16), return_hidden=True)
    >>> hidden.shape, z.shape
    (torch.Size([2, 8]), torch.Size([2, 4]))
    """

    def __init__(
        self, in_features: int, hidden_dim: int = 512, out_dim: int = 128
    ) -> None:
        super().__init__()
        self.in_features = _check_positive_int(in_features, "in_features")
        self.hidden_dim = _check_positive_int(hidden_dim, "hidden_dim")
        self.out_dim = _check_positive_int(out_dim, "out_dim")
        self.out_features = self.out_dim
        self.hidden_representation = nn.Linear(self.in_features, self.hidden_dim)
        self.relu = nn.ReLU()
        self.head_projection = nn.Linear(self.hidden_dim, self.out_dim)
        nn.init.zeros_(self.hidden_representation.bias)
        nn.init.zeros_(self.head_projection.bias)

    def forward(self, h: torch.Tensor, return_hidden: bool = False):
        """Project backbone features.

        Parameters
        ----------
        h : torch.Tensor of shape (n, in_features)
            Backbone features.
        return_hidden : bool, default=False
            Also return the hidden layer output, taken *before* the ReLU.

        Returns
        -------
        z : torch.Tensor of shape (n, out_dim)
            The projection, if ``return_hidden`` is False.
        (hidden, z) : tuple of torch.Tensor
            ``hidden`` of shape (n, hidden_dim) and ``z``, if ``return_hidden``.
        """
        hidden = self.hidden_representation(h)
        z = self.head_projection(self.relu(hidden))
        if return_hidden:
            return hidden, z
        return z


class ContrastiveModel(nn.Module):
    """A backbone followed by a projection head.

    Parameters
    ----------
    backbone : torch.nn.Module
        Encoder mapping a batch to ``(n, backbone.out_features)``.
    head : ProjectionHead
        Projection head whose ``in_features`` equals ``backbone.out_features``.

    Attributes
    ----------
    backbone : torch.nn.Module
        The encoder.
    head : ProjectionHead
        The projection head.

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.nn import ContrastiveModel, MLPEncoder, ProjectionHead
    >>> model = ContrastiveModel(MLPEncoder(6, hidden_dims=(5,)),
    ...                          ProjectionHead(5, hidden_dim=4, out_dim=3))
    >>> x = torch.zeros(2, 6)
    >>> model(x).shape
    torch.Size([2, 3])
    >>> model.encode(x, layer="hidden").shape
    torch.Size([2, 4])
    >>> model.feature_dim("backbone")
    5
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        b_dim = getattr(backbone, "out_features", None)
        h_dim = getattr(head, "in_features", None)
        if b_dim is not None and h_dim is not None and b_dim != h_dim:
            raise ValueError(
                f"The backbone outputs {b_dim} features but the head expects "
                f"in_features={h_dim}."
            )
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the projection ``head(backbone(x))`` of shape (n, out_dim)."""
        return self.head(self.backbone(x))

    @staticmethod
    def _check_layer(layer):
        if layer not in LAYERS:
            raise ValueError(
                f"layer must be one of {', '.join(map(repr, LAYERS))}; "
                f"got layer={layer!r}."
            )

    def encode(self, x: torch.Tensor, layer: str = "backbone") -> torch.Tensor:
        """Return the representation of ``x`` at ``layer``.

        Parameters
        ----------
        x : torch.Tensor
            Input batch.
        layer : {"backbone", "hidden", "projection"}, default="backbone"
            ``"backbone"``: pooled backbone features; ``"hidden"``: output of
            the head's first Linear, before its ReLU; ``"projection"``: the
            head output.

        Returns
        -------
        features : torch.Tensor of shape (n, feature_dim(layer))
        """
        self._check_layer(layer)
        h = self.backbone(x)
        if layer == "backbone":
            return h
        hidden, z = self.head(h, return_hidden=True)
        return hidden if layer == "hidden" else z

    def feature_dim(self, layer: str = "backbone") -> int:
        """Return the dimension of the output of :meth:`encode` at ``layer``.

        Parameters
        ----------
        layer : {"backbone", "hidden", "projection"}, default="backbone"

        Returns
        -------
        dim : int
        """
        self._check_layer(layer)
        if layer == "backbone":
            return int(self.backbone.out_features)
        if layer == "hidden":
            return int(self.head.hidden_dim)
        return int(self.head.out_dim)
