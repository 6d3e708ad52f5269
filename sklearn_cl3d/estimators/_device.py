"""Device, precision and memory-format choices every estimator shares."""

from __future__ import annotations

import torch

__all__ = [
    "MEMORY_FORMATS",
    "PRECISIONS",
    "resolve_device",
    "resolve_memory_format",
    "resolve_precision",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision, device):
    """Turn ``precision="auto"`` into the precision used on ``device``.

    ``"auto"`` is ``"bf16"`` on a CUDA device that supports bfloat16 (fast and
    safe: no loss scaling needed) and ``"fp32"`` elsewhere (CPUs gain little
    from autocast and lose precision).

    Parameters
    ----------
    precision : {"auto", "fp32", "bf16", "fp16"}
    device : str or None
        A resolved device string (``"cpu"``, ``"cuda:0"``, ...).

    Returns
    -------
    str
        ``"fp32"``, ``"bf16"`` or ``"fp16"``.

    Examples
    --------
    >>> resolve_precision("auto", "cpu")
    'fp32'
    """
    if precision != "auto":
        return precision
    if device is not None and torch.device(device).type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "fp32"


def resolve_memory_format(memory_format, device, ndim):
    """The torch memory format for conv inputs of ``ndim`` dims on ``device``.

    ``"auto"`` is channels-last (``channels_last_3d`` for volumes) on CUDA,
    where cuDNN's reduced-precision convolutions prefer it, and contiguous on
    CPUs. Inputs other than 4-D/5-D are always contiguous.

    Parameters
    ----------
    memory_format : {"auto", "contiguous", "channels_last"}
    device : str or None
    ndim : int
        Number of dimensions of the batch (5 for volumes, 4 for slices).

    Returns
    -------
    torch.memory_format

    Examples
    --------
    >>> resolve_memory_format("channels_last", "cpu", 5)
    torch.channels_last_3d
    """
    if ndim not in (4, 5):
        return torch.contiguous_format
    if memory_format == "auto":
        cuda = device is not None and torch.device(device).type == "cuda"
        memory_format = "channels_last" if cuda else "contiguous"
    if memory_format == "contiguous":
        return torch.contiguous_format
    return torch.channels_last_3d if ndim == 5 else torch.channels_last


def resolve_device(device):
    """Turn ``"auto"`` into ``"cuda"`` when CUDA is available, else ``"cpu"``.

    Parameters
    ----------
    device : str, torch.device or None
        ``"auto"``, a torch device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``),
        or None (skorch's "leave tensors where they are").

    Returns
    -------
    str or None

    Examples
    --------
    >>> resolve_device("cpu")
    'cpu'
    """
    if device is None:
        return None
    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or another torch "
            f"device string; got {device!r}."
        ) from exc
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but CUDA is not available on this "
            "machine; use device='auto' or 'cpu'."
        )
    return device
