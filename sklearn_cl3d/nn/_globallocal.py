"""The network of global-local contrastive pretraining (Chaitanya et al.,
NeurIPS 2020): a U-Net with its global and local projection heads."""

from __future__ import annotations

from numbers import Integral

import numpy as np
from torch import nn

from ._unet import GlobalHead, LocalHead, UNet

__all__ = ["GlobalLocalNet"]


class GlobalLocalNet(nn.Module):
    """The U-Net and both projection heads of global-local pretraining.

    Parameters
    ----------
    dims : {2, 3}, default=2
    in_channels : int, default=1
    channels : sequence of int, default=(16, 32, 64, 128, 128, 128)
        Encoder levels of the :class:`~sklearn_cl3d.nn.UNet`.
    input_size : sequence of int, default=(192, 192)
        Spatial size of the network input (fixes the flattened size the
        global head takes).
    hidden_dim, out_dim : int, default=1024, 128
        Sizes of the global head :class:`~sklearn_cl3d.nn.GlobalHead`.
    n_decoder_blocks : int, default=3
        Decoder blocks ``l`` whose output feeds the local head
        :class:`~sklearn_cl3d.nn.LocalHead`.

    Examples
    --------
    >>> import torch
    >>> net = GlobalLocalNet(channels=(4, 8, 8), input_size=(16, 16),
    ...                      hidden_dim=8, out_dim=4, n_decoder_blocks=1)
    >>> x = torch.zeros(2, 1, 16, 16)
    >>> net(x, mode="global").shape, net(x, mode="local").shape
    (torch.Size([2, 4]), torch.Size([2, 8, 8, 8]))
    >>> net.features(x, "backbone").shape
    torch.Size([2, 8])
    """

    def __init__(
        self,
        dims=2,
        in_channels=1,
        channels=(16, 32, 64, 128, 128, 128),
        input_size=(192, 192),
        hidden_dim=1024,
        out_dim=128,
        n_decoder_blocks=3,
    ):
        super().__init__()
        self.unet = UNet(dims=dims, in_channels=in_channels, channels=channels)
        n_blocks = len(self.unet.decoder_blocks)
        if not (isinstance(n_decoder_blocks, Integral) and 1 <= n_decoder_blocks):
            raise ValueError(
                f"n_decoder_blocks must be an int >= 1; got {n_decoder_blocks!r}."
            )
        if n_decoder_blocks > n_blocks:
            raise ValueError(
                f"n_decoder_blocks={n_decoder_blocks} exceeds the {n_blocks} decoder "
                f"blocks of a U-Net with {len(self.unet.channels)} encoder levels."
            )
        self.n_decoder_blocks = int(n_decoder_blocks)
        encoded = self.unet.encoded_shape(input_size)
        self.global_head = GlobalHead(
            int(np.prod(encoded)), hidden_dim=hidden_dim, out_dim=out_dim
        )
        self.local_head = LocalHead(
            self.unet.decoder_channels[self.n_decoder_blocks - 1], dims=dims
        )

    def forward(self, x, mode="global"):
        """``"global"``: g1(encoder(x)); ``"local"``: g2(decoder block l)."""
        if mode == "global":
            return self.global_head(self.unet.encode(x))
        if mode == "local":
            return self.local_head(self.unet.decode(x, self.n_decoder_blocks))
        raise ValueError(f"mode must be 'global' or 'local'; got {mode!r}.")

    def feature_dim(self, layer):
        """Size of the features :meth:`features` returns for ``layer``."""
        head = self.global_head
        return {
            "backbone": self.unet.channels[-1],
            "flat": head.in_features,
            "hidden": head.hidden_dim,
            "projection": head.out_dim,
        }[layer]

    def features(self, x, layer="backbone"):
        """Global encoder features of a batch.

        ``"backbone"``: the level-L encoder map averaged over space;
        ``"flat"``: that map flattened (the input of g1); ``"hidden"``: g1's
        hidden layer before its ReLU; ``"projection"``: g1's output.
        """
        h = self.unet.encode(x)
        if layer == "backbone":
            return h.mean(dim=tuple(range(2, h.ndim)))
        if layer == "flat":
            return h.flatten(1)
        _, first, relu, second = self.global_head.net
        hidden = first(h.flatten(1))
        if layer == "hidden":
            return hidden
        return second(relu(hidden))
