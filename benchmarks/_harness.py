"""Shared harness of the benchmarks that compare the library with an official
implementation: each side runs in its own fresh process, the sides alternate,
and the parent collects one JSON record per run.

A script describes its sides as functions ``side(cfg) -> dict`` (run in the
child) and calls :func:`main`::

    SIDES = {"official": official_side, "library": library_side}
    if __name__ == "__main__":
        main(__file__, SIDES, add_arguments, default_out)

``--official PATH`` names a checkout of the official repository; without it
every side whose name starts with ``official`` is skipped (and said so in the
JSON). The official code is imported from that checkout at run time; nothing
of it is copied here. Run-time patches a side needs to make the official code
run are recorded by the side in its result (``"patches"``).

The children time steps with :class:`StepClock` (:class:`CudaStepClock`
on a GPU, with :class:`GpuMonitor` sampling the GPU's utilisation) and
report the peak RSS
(``VmHWM``), so memory is per side and not inherited from the parent. A side
whose unit of work is not a training step (one augmented view, say) says so
with ``"unit"`` in its result. :func:`step_breakdown` splits a fitted
estimator's training step into its phases.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from _bench_common import gib, loadavg, machine, peak_rss_bytes, synchronizer

HERE = Path(__file__).resolve().parent


class StepClock:
    """Wall and process-CPU time of successive steps, warm-up excluded."""

    def __init__(self, warmup):
        self.warmup = int(warmup)
        self.wall, self.cpu = [], []
        self._n = 0
        self._t = self._c = None

    def start(self):
        self._t, self._c = time.perf_counter(), time.process_time()

    def stop(self):
        wall = time.perf_counter() - self._t
        cpu = time.process_time() - self._c
        self._n += 1
        if self._n > self.warmup:
            self.wall.append(wall)
            self.cpu.append(cpu)

    def tick(self):
        """Stop the running step (if any) and start the next one."""
        if self._t is not None:
            self.stop()
        self.start()

    def result(self):
        if not self.wall:
            return {"step_wall_s": None}
        return {
            "step_wall_s": statistics.median(self.wall),
            "step_cpu_s": statistics.median(self.cpu),
            "steps_wall_s": self.wall,
            "peak_rss_gib": gib(peak_rss_bytes()),
        }


class CudaStepClock(StepClock):
    """A :class:`StepClock` that waits for the GPU before it stops a step (a
    plain one where CUDA is unavailable), so a step's time includes its
    kernels, not only their launch. With a :class:`GpuMonitor`, the
    monitor's samples start when the warm-up ends."""

    def __init__(self, warmup, monitor=None):
        super().__init__(warmup)
        self.monitor = monitor

    def stop(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        super().stop()
        if self.monitor is not None and self._n == self.warmup:
            self.monitor.mark()


def on_cuda(cfg):
    """Whether a side's ``cfg["device"]`` is a CUDA device."""
    return torch.device(cfg["device"]).type == "cuda"


def bind_cuda_device(device):
    """On ``cuda:N``, make N the current device, so that synchronisation and
    ``torch.cuda`` memory statistics refer to it (nothing elsewhere)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)


class GpuMonitor:
    """GPU utilisation sampled in a background thread while a side trains.

    ``with GpuMonitor(device) as mon: ...`` polls NVML (through
    ``torch.cuda.utilization``, which needs ``nvidia-ml-py``) every
    ``interval`` seconds; :meth:`record` gives the mean and median
    utilisation in percent over the samples taken after :meth:`mark` (call
    it when the warm-up ends; all samples otherwise), the number of samples,
    and ``torch.cuda``'s peak allocated and reserved memory. On a CPU device,
    or where NVML cannot be read, the utilisation fields are absent and the
    record says why.
    """

    def __init__(self, device, interval=0.2):
        self.device = str(device)
        self.interval = float(interval)
        self.samples, self._start, self.why = [], 0, None
        self._stop = None
        self._thread = None

    def __enter__(self):
        import threading

        if not self.device.startswith("cuda") or not torch.cuda.is_available():
            self.why = "not a CUDA device"
            return self
        try:
            torch.cuda.utilization()
        except Exception as exc:  # NVML missing or unreadable: report, go on
            self.why = f"NVML unavailable: {type(exc).__name__}: {exc}"
            return self
        self._stop = threading.Event()

        def poll():
            while not self._stop.wait(self.interval):
                try:
                    self.samples.append(float(torch.cuda.utilization()))
                except Exception:  # a failed read is one sample fewer
                    pass

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def mark(self):
        """Keep only the samples taken from now on."""
        self._start = len(self.samples)

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        return False

    def record(self):
        rec = {}
        if self.device.startswith("cuda") and torch.cuda.is_available():
            rec["cuda_max_allocated_gib"] = gib(torch.cuda.max_memory_allocated())
            rec["cuda_max_reserved_gib"] = gib(torch.cuda.max_memory_reserved())
        samples = self.samples[self._start :] or self.samples
        if samples:
            rec["gpu_util_mean_pct"] = statistics.fmean(samples)
            rec["gpu_util_median_pct"] = statistics.median(samples)
            rec["gpu_util_samples"] = len(samples)
        elif self.device.startswith("cuda"):
            rec["gpu_util_missing"] = self.why or "no sample taken"
        return rec


def skorch_ticker(clock, keep=None):
    """A skorch callback ticking ``clock`` at the end of every training batch
    (the clock starts with training). With a list ``keep``, the first
    training batch is appended to it (for :func:`step_breakdown`)."""
    from skorch.callbacks import Callback

    class Tick(Callback):
        def on_train_begin(self, net, **kwargs):
            clock.start()

        def on_batch_begin(self, net, batch=None, training=None, **kwargs):
            if training and keep is not None and not keep:
                keep.append(batch)

        def on_batch_end(self, net, training=None, **kwargs):
            if training:
                clock.tick()

    return Tick()


PHASES = ("prepare", "views", "forward", "loss", "backward", "optimizer")


def step_breakdown(est, batch, step_s, reps=5, warmup=1):
    """The phases of a fitted estimator's training step, timed one by one.

    Runs ``warmup + reps`` steps on ``batch`` (a batch the estimator's loader
    gave, see :func:`skorch_ticker`) through the estimator's own hooks, in
    the order its ``train_step`` runs them: ``prepare`` (device transfer,
    normalisation), ``views`` (the two augmented views), ``forward`` (both
    views through the network, in the estimator's precision), ``loss``,
    ``backward`` and ``optimizer`` (its step and ``zero_grad``), the device
    synchronised between phases on CUDA. Returns the median of each phase,
    their sum, and their shares of ``step_s`` (a step measured by the clock
    during ``fit``); ``rest`` is the share of the step outside the phases
    (loading the batch, skorch's bookkeeping). The estimator's parameters
    change (extra optimizer steps): call it after everything else.
    """
    from skorch.dataset import unpack_data

    sync = synchronizer(est.device)
    xi, yi = unpack_data(batch)
    times = {name: [] for name in PHASES}
    with est._on_device():
        est._set_training(True)
        opt = est.optimizer_
        opt.zero_grad()
        marks = []

        def mark():
            sync()
            marks.append(time.perf_counter())

        for i in range(warmup + reps):
            marks[:] = [time.perf_counter()]
            x = est._prepare(xi)
            mark()
            v1, v2 = est._views(x)
            mark()
            net = est._net()
            with est._autocast():
                z1, z2 = net(est._as_input(v1)), net(est._as_input(v2))
            y_pred = (z1.float(), z2.float())
            mark()
            loss = est.get_loss(y_pred, yi, X=xi, training=True)
            mark()
            loss.backward()
            mark()
            opt.step()
            opt.zero_grad()
            mark()
            if i >= warmup:
                for name, t0, t1 in zip(PHASES, marks, marks[1:]):
                    times[name].append(t1 - t0)
    phase = {name: statistics.median(v) for name, v in times.items()}
    total = sum(phase.values())
    share = {name: v / step_s for name, v in phase.items()}
    share["rest"] = 1.0 - total / step_s
    return {
        "reps": reps,
        "phase_s": phase,
        "phase_sum_s": total,
        "step_s": step_s,
        "share_of_step": share,
    }


def _child(sides):
    cfg = json.loads(os.environ["CL3D_BENCH_CFG"])
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    name = cfg["side"]
    out = sides[name](cfg)
    out["side"] = name
    out["loadavg_after"] = loadavg()
    print("CL3D_BENCH_RESULT " + json.dumps(out), flush=True)


def check_device(args, parser):
    """``configure`` check of ``--device``: cpu, cuda or cuda:N, CUDA
    present and the index existing (``parser.error`` otherwise)."""
    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError):
        parser.error(f"--device: not a device: {args.device!r}")
    if device.type not in ("cpu", "cuda"):
        parser.error("--device: cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            parser.error(f"--device {args.device}: CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            parser.error(
                f"--device {args.device}: only {torch.cuda.device_count()} "
                "CUDA device(s)"
            )


def run_side(script, cfg, side, timeout):
    """Run one side in a fresh process and return its JSON record."""
    env = dict(os.environ)
    env["CL3D_BENCH_CFG"] = json.dumps({**cfg, "side": side})
    env["OMP_NUM_THREADS"] = str(cfg["threads"])
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, str(script), "--child"],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=str(HERE),
        )
    except subprocess.TimeoutExpired as exc:  # the other sides still run
        tail = exc.stderr or ""
        if isinstance(tail, bytes):
            tail = tail.decode(errors="replace")
        return {
            "side": side,
            "error": f"timed out after {timeout:g} s",
            "stderr_tail": tail[-3000:],
        }
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith("CL3D_BENCH_RESULT "):
            rec = json.loads(line[len("CL3D_BENCH_RESULT ") :])
            rec["process_wall_s"] = time.perf_counter() - t0
            return rec
    return {
        "side": side,
        "error": f"exit {proc.returncode}",
        "stderr_tail": proc.stderr[-3000:],
    }


def _summary(records, sides, baseline):
    """Medians per side, and each side's speed-up against its baseline: the
    side named ``baseline`` (a str), or ``baseline[side]`` (a dict)."""
    out = {}
    for side in sides:
        runs = [r for r in records if r.get("side") == side and r.get("step_wall_s")]
        if not runs:
            continue
        out[side] = {
            "unit": runs[0].get("unit", "step"),
            "median_step_wall_s": statistics.median(r["step_wall_s"] for r in runs),
            "median_step_cpu_s": statistics.median(r["step_cpu_s"] for r in runs),
            "median_peak_rss_gib": statistics.median(r["peak_rss_gib"] for r in runs),
            "runs": len(runs),
        }
    for side, rec in out.items():
        base_name = baseline if isinstance(baseline, str) else baseline.get(side)
        base = out.get(base_name)
        if not base:
            continue
        rec["speedup_vs_" + base_name] = (
            base["median_step_wall_s"] / rec["median_step_wall_s"]
        )
        # per round: the baseline's run and this side's run of the same round
        pairs = []
        for rnd in {r["round"] for r in records}:
            b = [r for r in records if r["round"] == rnd and r["side"] == base_name]
            s = [r for r in records if r["round"] == rnd and r["side"] == side]
            if b and s and b[0].get("step_wall_s") and s[0].get("step_wall_s"):
                pairs.append(b[0]["step_wall_s"] / s[0]["step_wall_s"])
        rec["speedup_per_round"] = sorted(pairs)
    return out


def _checkout(path):
    """The official checkout: its path and, where it is a git work tree, its
    commit (an extracted archive has none)."""
    if path is None:
        return None
    root, commit = Path(path).resolve(), None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        out = []
    if len(out) == 2 and Path(out[0]).resolve() == root:
        commit = out[1]  # not the commit of a repository around the checkout
    return {"path": str(root), "commit": commit}


def _seconds(x):
    return f"{x * 1e3:.2f} ms" if x < 1 else f"{x:.3f} s"


def main(
    script,
    sides,
    add_arguments,
    default_out,
    baseline="official",
    on_request=(),
    configure=None,
    notes=None,
):
    """Parse the command line, run the sides alternately and write the JSON.

    ``baseline`` names the side every other side is compared with, or maps
    each side to its own (``{"library_x": "official_x", ...}``).
    ``configure(args, parser)``, if given, runs after parsing (before any
    child): it may adjust ``args`` (a ``--quick`` preset, say) or call
    ``parser.error``. ``notes`` (a dict) is written to the JSON as it is:
    what a script records once per run, such as why an official side cannot
    run here.
    """
    if "--child" in sys.argv:
        _child(sides)
        return None
    parser = argparse.ArgumentParser(description=sys.modules["__main__"].__doc__)
    parser.add_argument(
        "--official",
        type=Path,
        default=None,
        help="checkout of the official repository",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds; each round runs every side once"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--sides", nargs="*", default=None, help="only these sides (default: all)"
    )
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--out", type=Path, default=Path(default_out))
    add_arguments(parser)
    args = parser.parse_args()
    if args.official is not None:
        # the sides run with the benchmarks folder as working directory
        args.official = args.official.resolve()
    if configure is not None:
        configure(args, parser)
    cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    if args.sides:
        names = [s for s in sides if s in args.sides]
    else:
        names = [s for s in sides if s not in on_request]
    skipped = []
    if args.official is None or not args.official.is_dir():
        skipped = [s for s in names if s.startswith("official")]
        names = [s for s in names if s not in skipped]
    records = []
    for rnd in range(args.repeats):
        order = names if rnd % 2 == 0 else names[::-1]
        for side in order:
            rec = run_side(script, cfg, side, args.timeout)
            rec["round"] = rnd
            records.append(rec)
            wall = rec.get("step_wall_s")
            unit = rec.get("unit", "step")
            shown = f"{_seconds(wall)}/{unit}" if wall else rec.get("error", "done")
            print(f"round {rnd + 1}/{args.repeats} {side}: {shown}", flush=True)
    summary = _summary(records, names, baseline)
    payload = {
        "command": "python " + " ".join([Path(script).name] + sys.argv[1:]),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(getattr(args, "device", "cpu"), threads=args.threads),
        "config": {k: v for k, v in cfg.items() if k not in ("out",)},
        "official_checkout": _checkout(args.official),
        "skipped": {s: "no --official checkout given" for s in skipped},
        **({"notes": notes} if notes else {}),
        "summary": summary,
        "runs": records,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1))
    for side, rec in summary.items():
        extra = "".join(
            f"  x{v:.2f} vs {k[len('speedup_vs_') :]}"
            for k, v in rec.items()
            if k.startswith("speedup_vs_")
        )
        print(
            f"{side:28s} {_seconds(rec['median_step_wall_s'])}/{rec['unit']}  "
            f"{rec['median_peak_rss_gib']:.2f} GiB{extra}"
        )
    print(f"wrote {args.out}")
    return payload
