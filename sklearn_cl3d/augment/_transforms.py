"""Batched, dimension-generic tensor augmentations.

Every operation takes a floating-point tensor ``x`` of shape
``(B, C, *spatial)`` with one, two or three spatial dimensions and returns a
new tensor with the same shape, dtype and device; the input is never modified.
Random parameters are drawn independently for each sample of the batch, on
``x.device``, from the optional :class:`torch.Generator` passed as
``generator``: the same seeded generator gives the same output.

The operations mirror the augmentations of the official y-Aware code
(``Normalize``, ``Flip``, ``Blur``, ``Noise``, ``Cutout`` and ``Crop``), but
work on whole batches at once instead of one numpy array at a time.

Random operations split their work in two public steps, which makes them easy
to inspect and test: :meth:`sample_params` draws the per-sample parameters and
:meth:`apply` uses them. Calling the operation does both.

The operations are defined in ``_filters`` (:class:`ZScore`,
:class:`GaussianBlur`, :class:`GaussianNoise`) and ``_spatial``
(:class:`Flip`, :class:`Cutout`, :class:`RandomResizedCrop`) on the shared
machinery of ``_core``; this module composes them
(:class:`RandomApply`, :class:`Compose`) and keeps every name importable
from here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from ._core import (
    _check_input,
    _check_scalar,
    _compute_dtype as _compute_dtype,
    _is_real as _is_real,
    _Op,
    _RandomOp,
    _uniform as _uniform,
)
from ._filters import GaussianBlur, GaussianNoise, ZScore
from ._spatial import Cutout, Flip, RandomResizedCrop

__all__ = [
    "ZScore",
    "Flip",
    "GaussianBlur",
    "GaussianNoise",
    "Cutout",
    "RandomResizedCrop",
    "RandomApply",
    "Compose",
]


def _runs(flags: list[bool]) -> list[tuple[int, int, bool]]:
    """Split a list of flags into maximal runs ``(start, stop, flag)``."""
    runs = []
    start = 0
    for i in range(1, len(flags) + 1):
        if i == len(flags) or flags[i] != flags[start]:
            runs.append((start, i, flags[start]))
            start = i
    return runs


def _returns_new(op) -> bool:
    """Whether ``op`` surely returns a new tensor, referenced nowhere else."""
    if isinstance(op, RandomApply):
        return _returns_new(op.op)
    if isinstance(op, Compose):
        return not op.ops or _returns_new(op.ops[-1])
    return isinstance(op, (ZScore, _RandomOp))


class RandomApply(_Op):
    """Apply an operation to a random subset of the batch.

    Each sample independently gets ``op`` with probability ``p``. The chosen
    samples are transformed as one sub-batch (one call, one draw of the
    random parameters) and written back into a copy of the input; the others
    are returned unchanged. The package's own operations are applied to
    views of the input, written straight into the result, with the same
    outcome as gathering the sub-batch but no gather and fewer copies.

    Parameters
    ----------
    op : callable
        Operation called as ``op(sub_batch, generator=generator)``.
    p : float, default=0.5
        Probability, in [0, 1], that a sample is transformed. With ``p=1``
        the whole batch goes through ``op`` (no selection is drawn); with
        ``p=0`` a copy of the input is returned.

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.augment import Cutout, RandomApply
    >>> x = torch.ones(100, 1, 4, 4)
    >>> y = RandomApply(Cutout(), p=0.5)(x, generator=torch.Generator().manual_seed(0))
    >>> n_changed = int((y != x).flatten(1).any(dim=1).sum())
    >>> 30 < n_changed < 70
    True
    """

    _param_names = ("op", "p")

    def __init__(self, op: Callable, p: float = 0.5):
        if not callable(op):
            raise ValueError(f"`op` must be callable, got {op!r}.")
        self.op = op
        self.p = _check_scalar(p, "p", low=0.0, high=1.0)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Apply ``op`` to each sample with probability ``p``.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, \\*spatial)
            Floating-point batch.
        generator : torch.Generator or None, default=None
            Source of randomness, on the device of ``x``; also passed to
            ``op``.

        Returns
        -------
        torch.Tensor
            New batch, same shape, dtype and device as ``x``.
        """
        _check_input(x)
        if self.p == 1.0:
            return self.op(x, generator=generator)
        runs = self._draw(x, generator)
        if not any(chosen for _, _, chosen in runs):
            return x.clone()
        if len(runs) == 1 and _returns_new(self.op):
            return self.op(x, generator=generator)
        # each sample is copied once: kept ones from x, chosen ones from op
        out = torch.empty_like(x)
        for start, stop, chosen in runs:
            if not chosen:
                out[start:stop].copy_(x[start:stop])
        self._apply_runs(x, out, runs, generator)
        return out

    def _draw(self, x: Tensor, generator) -> list[tuple[int, int, bool]]:
        """Draw the chosen samples, as runs ``(start, stop, chosen)``."""
        if self.p == 0.0 or x.shape[0] == 0:
            return [(0, x.shape[0], False)]
        chosen = torch.rand(x.shape[0], generator=generator, device=x.device) < self.p
        return _runs(chosen.tolist())

    def _apply_runs(self, x: Tensor, out: Tensor, runs, generator) -> None:
        """Write ``op`` of the chosen samples of ``x`` into ``out``."""
        picked = [(start, stop) for start, stop, chosen in runs if chosen]
        if isinstance(self.op, _RandomOp):
            self._apply_runs_in_views(x, out, picked, generator)
            return
        if len(picked) == 1:
            sub = x[picked[0][0] : picked[0][1]]  # a view, no gather
        else:
            index = torch.cat([torch.arange(a, b) for a, b in picked])
            sub = x.index_select(0, index.to(x.device))
        result = self.op(sub, generator=generator)
        offset = 0
        for start, stop in picked:
            out[start:stop].copy_(result[offset : offset + stop - start])
            offset += stop - start

    def _apply_runs_in_views(self, x: Tensor, out: Tensor, picked, generator):
        """Same result as gathering the chosen samples and calling ``op`` on
        them, without the gather: the parameters are drawn once for the
        chosen samples (same random stream), then each run of consecutive
        chosen samples is transformed from its view of ``x`` straight into
        ``out``."""
        op = self.op
        n = sum(stop - start for start, stop in picked)
        like = x[:1].expand(n, *x.shape[1:])  # the sub-batch's shape, no copy
        _check_input(like)
        params = op.sample_params(like, generator=generator)
        if not all(
            isinstance(v, Tensor) and v.ndim >= 1 and v.shape[0] == n
            for v in params.values()
        ):
            # parameters not per sample: apply them to the gathered batch
            index = torch.cat([torch.arange(a, b) for a, b in picked])
            result = op.apply(x.index_select(0, index.to(x.device)), params)
            offset = 0
            for start, stop in picked:
                out[start:stop].copy_(result[offset : offset + stop - start])
                offset += stop - start
            return
        offset = 0
        for start, stop in picked:
            count = stop - start
            part = {k: v[offset : offset + count] for k, v in params.items()}
            op._apply_into(x[start:stop], part, out[start:stop])
            offset += count

    def _apply_inplace(self, x: Tensor, generator) -> None:
        """Same draw and result as calling, but written into ``x``.

        Only for a tensor that nobody else holds, and an ``op`` that returns
        a new tensor (so the result never aliases ``x``).
        """
        runs = self._draw(x, generator)
        if any(chosen for _, _, chosen in runs):
            self._apply_runs(x, x, runs, generator)


class Compose(_Op):
    """Chain operations, applied in order.

    Parameters
    ----------
    ops : iterable of callable
        Operations, each called as ``op(x, generator=generator)``.

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.augment import Compose, Cutout, Flip, RandomApply
    >>> aug = Compose([RandomApply(Flip(), p=0.5), Cutout()])
    >>> x = torch.randn(2, 1, 8, 8, 8)
    >>> aug(x, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([2, 1, 8, 8, 8])
    """

    def __init__(self, ops: Iterable[Callable]):
        try:
            ops = list(ops)
        except TypeError:
            raise ValueError(
                f"`ops` must be an iterable of callables, got {ops!r}."
            ) from None
        for op in ops:
            if not callable(op):
                raise ValueError(f"`ops` must contain callables only, got {op!r}.")
        self.ops = ops

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Apply every operation in turn.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, \\*spatial)
            Floating-point batch.
        generator : torch.Generator or None, default=None
            Source of randomness, passed to every operation.

        Returns
        -------
        torch.Tensor
            Transformed batch (a new tensor, even when ``ops`` is empty).
        """
        _check_input(x)
        out = x
        owned = False  # whether ``out`` is a new tensor that only we hold
        for op in self.ops:
            if (
                owned
                and isinstance(op, RandomApply)
                and op.p < 1.0
                and _returns_new(op.op)
            ):
                # update in place, saving a copy of the samples left unchanged
                op._apply_inplace(out, generator)
            else:
                out = op(out, generator=generator)
                owned = _returns_new(op)
        return out.clone() if out is x else out

    def __len__(self) -> int:
        return len(self.ops)

    def __getitem__(self, index):
        return self.ops[index]

    def __repr__(self) -> str:
        if not self.ops:
            return "Compose([])"
        inner = "".join(f"\n    {op!r}," for op in self.ops)
        return f"Compose([{inner}\n])"
