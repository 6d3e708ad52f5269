"""Device, precision and memory-format choices every estimator shares."""

from __future__ import annotations

import functools
import sys

import torch

__all__ = [
    "MEMORY_FORMATS",
    "PRECISIONS",
    "cpu_bf16_is_faster",
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
    safe: no loss scaling needed), ``"bf16"`` on a CPU where bfloat16 autocast
    was measured faster than float32 (see :func:`cpu_bf16_is_faster`), and
    ``"fp32"`` elsewhere.

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
    >>> resolve_precision("fp32", "cpu")
    'fp32'
    >>> resolve_precision("auto", "cpu") in ("fp32", "bf16")
    True
    """
    if precision != "auto":
        return precision
    if device is not None and torch.device(device).type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device is not None and torch.device(device).type == "cpu":
        return "bf16" if cpu_bf16_is_faster() else "fp32"
    return "fp32"


def cpu_info_fields():
    """The first processor's fields of ``/proc/cpuinfo`` (``"vendor_id"``,
    ``"model name"``, ``"flags"``, ...) as strings; empty where the file
    cannot be read (other platforms)."""
    if not sys.platform.startswith("linux"):
        return {}
    fields = {}
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    if fields:
                        break  # the end of the first processor's block
                    continue
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return {}
    return fields


def _cpu_identity():
    """The CPU's vendor and feature flags (see :func:`cpu_info_fields`);
    ``("", frozenset())`` where they cannot be read."""
    fields = cpu_info_fields()
    return fields.get("vendor_id", ""), frozenset(fields.get("flags", "").split())


@functools.cache
def cpu_bf16_is_faster():
    """Whether ``precision="auto"`` chooses bfloat16 autocast on this CPU.

    True on AMD CPUs with native bfloat16 arithmetic (AVX512-BF16: Zen 4 and
    later) when PyTorch's oneDNN can use it. There, one y-Aware step of
    DenseNet-121 on 8 pairs of 64³ volumes took 0.54 times as long in
    bfloat16 as in float32 (2-core AMD EPYC with AVX512-BF16, one thread,
    measured before the bfloat16 guard below existed;
    ``benchmarks/measured/bench_precision_cpu_2core_quick.json``). On an
    Intel Xeon with AVX512-BF16 but without AMX (family 6, model 207, in a
    virtual machine) the same step took 1.19 times as long, so Intel CPUs,
    and every CPU not measured, stay in float32; choose ``precision="bf16"``
    yourself where you have measured it faster (Intel CPUs with AMX, say).
    The numbers are the same on both: oneDNN runs the same AVX512-BF16
    kernels, and the estimators take the weight gradients oneDNN gets wrong
    in float32 (see :mod:`sklearn_cl3d.nn._cpu_kernels`).

    Returns
    -------
    bool

    Examples
    --------
    >>> isinstance(cpu_bf16_is_faster(), bool)
    True
    """
    vendor, flags = _cpu_identity()
    if vendor != "AuthenticAMD" or "avx512_bf16" not in flags:
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


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
