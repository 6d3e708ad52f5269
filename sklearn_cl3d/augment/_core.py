"""Shared machinery of the batched augmentations: parameter checks,
per-sample random draws (uniform values, large standard normal fields in
parallel, box positions) and the ``_Op`` / ``_RandomOp`` base classes."""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from numbers import Real

import torch
from torch import Tensor

__all__ = []

_HALF_DTYPES = (torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------
def _is_real(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _check_scalar(value, name: str, *, low=None, high=None, low_open=False):
    """Return ``value`` as a float after checking that it is a finite number."""
    if not _is_real(value) or not math.isfinite(float(value)):
        raise ValueError(f"`{name}` must be a finite real number, got {value!r}.")
    value = float(value)
    if low is not None and (value < low or (low_open and value == low)):
        bound = ">" if low_open else ">="
        raise ValueError(f"`{name}` must be {bound} {low}, got {value!r}.")
    if high is not None and value > high:
        raise ValueError(f"`{name}` must be <= {high}, got {value!r}.")
    return value


def _check_range(value, name: str) -> float | tuple[float, float]:
    """Validate a non-negative number or a ``(low, high)`` pair of them."""
    if _is_real(value):
        return _check_scalar(value, name, low=0.0)
    try:
        pair = tuple(value)
    except TypeError:
        pair = None
    if pair is None or len(pair) != 2:
        raise ValueError(
            f"`{name}` must be a non-negative number or a (low, high) pair, "
            f"got {value!r}."
        )
    low = _check_scalar(pair[0], name, low=0.0)
    high = _check_scalar(pair[1], name, low=0.0)
    if low > high:
        raise ValueError(f"`{name}` must satisfy low <= high, got {value!r}.")
    return (low, high)


def _check_input(x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"Expected a torch.Tensor, got {type(x).__name__}.")
    if x.ndim not in (3, 4, 5):
        raise ValueError(
            "Expected a tensor of shape (B, C, *spatial) with 1 to 3 spatial "
            f"dimensions, got shape {tuple(x.shape)}."
        )
    if not x.is_floating_point():
        raise TypeError(f"Expected a floating-point tensor, got dtype {x.dtype}.")


def _compute_dtype(x: Tensor) -> torch.dtype:
    """Working precision: half-precision inputs are processed in float32."""
    return torch.float32 if x.dtype in _HALF_DTYPES else x.dtype


def _uniform(n, value, generator, device) -> Tensor:
    """Draw ``n`` values from U(low, high), or repeat a fixed value."""
    if isinstance(value, tuple):
        low, high = value
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float32)
        return low + (high - low) * u
    return torch.full((n,), value, device=device, dtype=torch.float32)


#: Standard normal fields of at least this many values are drawn on the CPU
#: in ``_NORMAL_CHUNKS`` independent streams, filled by up to that many
#: threads (torch's generator is serial: one core fills about 300 million
#: values per second). The split is fixed, so the values depend on the seed
#: only, not on the number of threads.
_PARALLEL_NORMAL_MIN = 1 << 20
_NORMAL_CHUNKS = 2
_normal_pool = None
_normal_pool_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _normal_pool
    with _normal_pool_lock:
        if _normal_pool is None:
            _normal_pool = ThreadPoolExecutor(
                max_workers=_NORMAL_CHUNKS - 1, thread_name_prefix="cl3d-normal"
            )
        return _normal_pool


def _standard_normal(shape, generator, device, dtype) -> Tensor:
    """A standard normal tensor, drawn from ``generator``.

    Large CPU fields are split into ``_NORMAL_CHUNKS`` parts, each filled
    from its own generator seeded by a draw of ``generator``, in parallel
    threads when torch may use more than one.
    """
    device = torch.device(device)
    n = math.prod(shape)
    if device.type != "cpu" or n < _PARALLEL_NORMAL_MIN:
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    seeds = torch.randint(
        0, 2**62, (_NORMAL_CHUNKS,), generator=generator, device=device
    ).tolist()
    out = torch.empty(n, dtype=dtype, device=device)
    parts = out.chunk(_NORMAL_CHUNKS)

    def fill(indices):
        for i in indices:
            parts[i].normal_(generator=torch.Generator().manual_seed(seeds[i]))

    workers = max(1, min(_NORMAL_CHUNKS, torch.get_num_threads()))
    groups = [list(range(w, _NORMAL_CHUNKS, workers)) for w in range(workers)]
    futures = [_pool().submit(fill, group) for group in groups[1:]]
    fill(groups[0])
    for future in futures:
        future.result()
    return out.view(shape)


def _box_size(spatial, fraction: float) -> tuple[int, ...]:
    return tuple(min(n, max(1, math.ceil(fraction * n))) for n in spatial)


def _random_starts(x: Tensor, box, generator) -> Tensor:
    """Uniform start index of a box fully inside each spatial axis, (B, n_sp)."""
    starts = [
        torch.randint(0, n - b + 1, (x.shape[0],), generator=generator, device=x.device)
        for n, b in zip(x.shape[2:], box)
    ]
    return torch.stack(starts, dim=1)


def _format(value) -> str:
    return repr(value)


class _Op:
    """Shared ``__repr__`` and input checks of the augmentation operations."""

    _param_names: tuple[str, ...] = ()

    def __repr__(self) -> str:
        params = ", ".join(
            f"{name}={_format(getattr(self, name))}" for name in self._param_names
        )
        return f"{type(self).__name__}({params})"


class _RandomOp(_Op):
    """Operation whose per-sample parameters are drawn, then applied."""

    def sample_params(
        self, x: Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def apply(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError  # pragma: no cover - abstract

    def _apply_into(self, x: Tensor, params: dict[str, Tensor], out: Tensor) -> None:
        """Write ``apply(x, params)`` into ``out``, which may be ``x`` itself.

        Operations that can write their result directly (in place when
        ``out is x``) override this to save a copy of the batch.
        """
        out.copy_(self.apply(x, params))

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Draw per-sample parameters and transform ``x``.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, \\*spatial)
            Floating-point batch with 1 to 3 spatial dimensions.
        generator : torch.Generator or None, default=None
            Source of randomness, on the device of ``x``; None uses torch's
            default generator of that device.

        Returns
        -------
        torch.Tensor
            New batch, same shape, dtype and device as ``x``.
        """
        _check_input(x)
        if x.shape[0] == 0:
            return x.clone()
        return self.apply(x, self.sample_params(x, generator=generator))
