"""Helpers shared by the benchmark scripts: machine description, memory and
timing statistics. Imported as ``from _bench_common import ...`` (the scripts
run from this folder).

This is the one place of the machine and memory helpers; ``_harness.py``
(fresh-process alternation of the sides, step clocks, the JSON) imports
them from here."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys

import torch

try:  # optional, for the current RSS and the total RAM
    import psutil
except ImportError:  # pragma: no cover
    psutil = None

GIB = 1024**3


def usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def loadavg():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def peak_rss_bytes():
    """High-water mark of this process's resident set size, in bytes.

    On Linux ``VmHWM`` of ``/proc/self/status``: ``ru_maxrss`` would start
    from the parent's peak in a child process (it survives fork and exec).
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # kilobytes on Linux, bytes on macOS
    return int(peak if sys.platform == "darwin" else peak * 1024)


def total_ram_bytes():
    """Physical memory of the machine, or None without psutil."""
    return None if psutil is None else int(psutil.virtual_memory().total)


def current_rss_bytes():
    if psutil is None:
        return None
    return int(psutil.Process().memory_info().rss)


def cpu_model():
    """The CPU's model name, with its family and model numbers on Linux (a
    virtual machine may show only a vendor name such as "AMD EPYC")."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "model") and key not in fields:
                    fields[key] = value.strip()
                if not line.strip() and fields:
                    break  # first processor only
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or None
    if name and "cpu family" in fields and "model" in fields:
        name = f"{name} (family {fields['cpu family']}, model {fields['model']})"
    return name


def machine(device, threads=None):
    """What a benchmark's JSON records of the machine it ran on."""
    import numpy as np

    import sklearn_cl3d

    if torch.device(device).type == "cuda":
        device_name = torch.cuda.get_device_name(torch.device(device))
    else:
        device_name = cpu_model()
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "total_ram_gib": gib(total_ram_bytes()),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "sklearn_cl3d": sklearn_cl3d.__version__,
        "cuda_available": torch.cuda.is_available(),
        "device": device,
        "device_name": device_name,
        "torch_threads": torch.get_num_threads() if threads is None else threads,
        "loadavg_at_start": loadavg(),
    }


def stats(values):
    """Summary statistics of a list of seconds."""
    if not values:
        return None
    return {
        "n": len(values),
        "median": statistics.median(values),
        "mean": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
    }


def gib(n_bytes):
    return None if n_bytes is None else n_bytes / GIB


def synchronizer(device):
    if torch.device(device).type == "cuda":
        return torch.cuda.synchronize
    return lambda: None
