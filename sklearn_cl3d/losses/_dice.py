"""Soft Dice + cross-entropy segmentation loss (fine-tuning of global-local
pretraining, Chaitanya et al., NeurIPS 2020)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

__all__ = ["DiceCELoss"]


class DiceCELoss(nn.Module):
    """Soft Dice loss plus cross-entropy on segmentation logits.

    With ``p`` the softmax of the logits and ``g`` the one-hot target, the
    Dice of class ``c`` is ``(2 sum(p_c g_c) + eps) / (sum(p_c) + sum(g_c) +
    eps)``, the sums running over the whole batch; the loss is::

        dice_weight * (1 - mean_c Dice_c) + ce_weight * cross_entropy

    The official fine-tuning loss is the Dice term alone, background
    included (``ce_weight=0``).

    Parameters
    ----------
    dice_weight, ce_weight : float, default=1.0
        Weights of the two terms (non-negative).
    include_background : bool, default=True
        Average the Dice over all classes (True) or over classes 1.. only.
    eps : float, default=1e-5
        Smoothing of the Dice ratio.

    Examples
    --------
    >>> import torch
    >>> target = torch.tensor([[[0, 1], [1, 0]]])
    >>> logits = 20.0 * torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2)
    >>> round(float(DiceCELoss()(logits.float(), target)), 4)
    0.0
    """

    def __init__(
        self, dice_weight=1.0, ce_weight=1.0, include_background=True, eps=1e-5
    ):
        super().__init__()
        self.dice_weight = float(dice_weight)
        self.ce_weight = float(ce_weight)
        self.include_background = bool(include_background)
        self.eps = float(eps)

    def forward(self, logits, target):
        """Loss of logits ``(N, K, *spatial)`` against labels ``(N, *spatial)``."""
        logits = logits.float()
        loss = logits.new_zeros(())
        if self.dice_weight:
            k = logits.shape[1]
            prob = logits.softmax(dim=1)
            onehot = F.one_hot(target, k).movedim(-1, 1).to(prob.dtype)
            axes = (0, *range(2, logits.ndim))
            inter = (prob * onehot).sum(axes)
            denom = prob.sum(axes) + onehot.sum(axes)
            dice = (2 * inter + self.eps) / (denom + self.eps)
            if not self.include_background:
                dice = dice[1:]
            loss = loss + self.dice_weight * (1 - dice.mean())
        if self.ce_weight:
            loss = loss + self.ce_weight * F.cross_entropy(logits, target)
        return loss

    def extra_repr(self):
        return (
            f"dice_weight={self.dice_weight}, ce_weight={self.ce_weight}, "
            f"include_background={self.include_background}"
        )
