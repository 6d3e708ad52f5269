"""Progress in a real two-process run started by torchrun (gloo, CPU).

Each process of an Accelerate run iterates its shard of the epoch: with 16
samples, 2 processes and ``batch_size=2`` (per process), 4 steps each, where
skorch's own count would say 16 / 2 = 8. The bar drawn by the main process
and the history of every process must count those 4 steps.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("accelerate")

SCRIPT = textwrap.dedent(
    """
    import json, os, sys

    import numpy as np
    import torch
    import torch.distributed as dist
    from accelerate import Accelerator

    from sklearn_cl3d import YAwarePretrainer
    from sklearn_cl3d.callbacks import StepProgressBar
    from sklearn_cl3d.distributed import accelerated, rank, world_size

    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(16, 6)).astype(np.float32)
    age = rng.uniform(20, 80, 16).astype(np.float32)
    net = accelerated(YAwarePretrainer)(
        accelerator=accelerator, backbone="mlp", backbone__hidden_dims=(8,),
        hidden_dim=8, projection_dim=4, augmentation="none", batch_size=2,
        max_epochs=2, random_state=0, verbose=1,
    ).fit(X, age)
    bars = [cb for _, cb in net.callbacks_ if isinstance(cb, StepProgressBar)]
    info = {
        "rank": rank(),
        "world": world_size(),
        "batches": [len(row["batches"]) for row in net.history],
        "bar": [{"total": b.pbar_.total, "n": b.pbar_.n} for b in bars],
    }
    with open(os.path.join(sys.argv[1], f"rank{rank()}.json"), "w") as f:
        json.dump(info, f)
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # see tests/test_distributed.py: no native teardown at exit
    """
)


@pytest.mark.slow
def test_torchrun_bar_and_history_count_each_process_steps(tmp_path):
    script = tmp_path / "fit.py"
    script.write_text(SCRIPT)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nnodes", "1", "--nproc_per_node", "2", str(script), str(tmp_path),
    ]  # fmt: skip
    run = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, info in enumerate(ranks):
        assert info["rank"] == r and info["world"] == 2
        # the history counts this process's own steps, every epoch
        assert info["batches"] == [4, 4]
    # the main process draws one bar of 4 steps and runs them all; the other
    # process has no bar
    assert ranks[0]["bar"] == [{"total": 4, "n": 4}]
    assert ranks[1]["bar"] == []
    # what was drawn: every frame of the bar says "k/4", never "/8" (tqdm
    # throttles its redraws, so not every k is drawn)
    frames = re.findall(r"\|\s*(\d+)/(\d+)", run.stderr)
    assert frames, run.stderr[-2000:]
    assert {total for _, total in frames} == {"4"}
    # the epoch table is printed once (by the main process), 2 epochs
    table = re.sub(r"\x1b\[[0-9;]*m", "", run.stdout)  # colour codes
    rows = re.findall(r"^\s+([12])\s+[\d.]+\s+[\d.]+\s*$", table, flags=re.M)
    assert rows == ["1", "2"], run.stdout
