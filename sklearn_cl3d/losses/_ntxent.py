"""SimCLR's NT-Xent, on the official y-Aware scale."""

from __future__ import annotations

import torch

from ._infonce import check_temperature, kernel_infonce

__all__ = ["NTXentLoss", "nt_xent"]


def nt_xent(z_i, z_j, temperature=0.1):
    """NT-Xent (SimCLR) loss, returned as ``loss_view1 + loss_view2``.

    This is the official y-Aware repository's ``NTXenLoss`` scale: each view's
    anchors give a mean cross-entropy over the other ``2N - 1`` embeddings, and
    the two means are added. It is twice the usual NT-Xent averaged over all
    2N anchors. It is :func:`kernel_infonce` with partner-only weights.

    Parameters
    ----------
    z_i, z_j : torch.Tensor of shape (N, D)
        Embeddings of the two views, same sample order.
    temperature : float, default=0.1
        Softmax temperature, > 0.

    Returns
    -------
    torch.Tensor
        Scalar loss.

    Examples
    --------
    >>> import torch
    >>> z = torch.ones(2, 4)
    >>> round(float(nt_xent(z, z, temperature=1.0)), 4)  # 2 ln 3
    2.1972
    """
    return kernel_infonce(z_i, z_j, None, temperature=temperature)


class NTXentLoss(torch.nn.Module):
    """Module form of :func:`nt_xent`, usable as a skorch criterion.

    Parameters
    ----------
    temperature : float, default=0.1
        Softmax temperature, > 0.

    Examples
    --------
    >>> import torch
    >>> loss = NTXentLoss(temperature=0.5)
    >>> loss(torch.randn(4, 8), torch.randn(4, 8)).shape
    torch.Size([])
    """

    def __init__(self, temperature=0.1):
        super().__init__()
        self.temperature = check_temperature(temperature)

    def forward(self, z_i, z_j, y=None):
        """Return the loss; ``y`` is ignored (SimCLR uses no metadata)."""
        return nt_xent(z_i, z_j, temperature=self.temperature)

    def extra_repr(self):
        return f"temperature={self.temperature}"
