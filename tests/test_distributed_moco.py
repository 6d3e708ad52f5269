"""Multi-process DrasCLR (gathered MoCo keys, shuffle-BN) and Global-local
(gathered global loss).

Two processes on the CPU with the gloo backend on 127.0.0.1
(``torch.multiprocessing.spawn``), as in tests/test_distributed.py. All
checks of one run live in one worker (a spawn costs seconds of imports);
each rank writes what it saw and the parent compares.
"""

from __future__ import annotations

import copy
import faulthandler
import os
import socket
import sys
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from sklearn_cl3d import DrasCLREncoder, GlobalLocalPretrainer
from sklearn_cl3d.distributed import gather, rank, shuffled_forward

accelerate = pytest.importorskip("accelerate")

WORLD = 2
LANDMARKS = [[0, 0, 0], [0, 8, 8], [8, 8, 0]]
DRAS = dict(
    patch_size=8,
    n_experts=2,
    n_neighbors=1,
    projection_dim=16,
    queue_size=8,
    batch_size=2,
    landmarks=LANDMARKS,
    augmentation="none",
    device="cpu",
    random_state=0,
    verbose=0,
)
GL = dict(
    channels=(4, 8, 8, 8),
    slice_size=32,
    n_decoder_blocks=1,
    hidden_dim=16,
    projection_dim=8,
    region_dim=8,
    n_partitions=2,
    random_state=0,
    device="cpu",
    verbose=0,
)


def _volumes(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(-600, 300, size=(n, 16, 16, 16)).astype(np.float32)


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------- the checks


def _check_shuffled_forward(me):
    """Hand-checked shuffle-BN on rows that name themselves (row i = i)."""
    sizes = [2, 3]  # unequal shares
    start = sum(sizes[:me])
    full = torch.arange(sum(sizes), dtype=torch.float32)[:, None].repeat(1, 3)
    local = full[start : start + sizes[me]]
    seen = []

    def batchnorm_like(x):  # train-mode BatchNorm: depends on the whole batch
        seen.append(x[:, 0].long())
        return x - x.mean(0) + 10 * x

    gen = torch.Generator().manual_seed(1 + me)
    out, everyone = shuffled_forward(batchnorm_like, local, generator=gen)
    chunks = [c.tolist() for c in _split(gather(seen[0]), sizes)]
    # one permutation: every row went to exactly one process ...
    assert sorted(sum(chunks, [])) == list(range(sum(sizes)))
    # ... and not the identity (rank 0's seeded draw; shuffle-BN happened)
    assert sum(chunks, []) != list(range(sum(sizes)))
    # every row's output is the function of the chunk it was computed in,
    # put back in the row's place
    ref = torch.empty_like(full)
    for chunk in chunks:
        rows = full[chunk]
        ref[chunk] = rows - rows.mean(0) + 10 * rows
    torch.testing.assert_close(everyone, ref)
    torch.testing.assert_close(out, ref[start : start + sizes[me]])
    # a per-row function (BatchNorm in eval mode): the unshuffled result
    out, everyone = shuffled_forward(lambda x, y: 2 * x + y, local, local + 1)
    torch.testing.assert_close(out, 3 * local + 1)
    torch.testing.assert_close(everyone, 3 * full + 1)


def _split(t, sizes):
    return torch.split(t, sizes)


def _dras_batch(n, landmark, seed):
    gen = torch.Generator().manual_seed(seed)
    patches = torch.randn(n, 1, 8, 8, 8, generator=gen) * 300 - 600
    nbrs = torch.randn(n, 1, 1, 8, 8, 8, generator=gen) * 300 - 600
    marks = torch.full((n,), landmark, dtype=torch.long)
    return {"patches": patches, "neighbors": nbrs, "landmark": marks}


def _check_drasclr_step(me):
    """One training step in 2 processes == one process on the whole batch,
    with the key network's BatchNorm in eval mode (keys per sample)."""
    enc = DrasCLREncoder(**DRAS, max_epochs=0).fit(_volumes(4))
    n, landmark = 2, 1
    full = _dras_batch(WORLD * n, landmark, seed=0)
    mine = {k: v[me * n : (me + 1) * n] for k, v in full.items()}

    ref = copy.deepcopy(enc)
    ref.gather_distributed = False
    outputs = []
    for est, batch in ((enc, mine), (ref, full)):
        est._set_training(True)
        est._moco().key.eval()
        y_pred = est.infer(batch)
        est.get_loss(y_pred, None, training=True)
        outputs.append(y_pred)

    (_, key, _, _, queued), (_, key_ref, _, _, queued_ref) = outputs
    assert queued_ref is None  # no gathering: the local keys are queued
    # shuffle and unshuffle: every sample's key is its own
    torch.testing.assert_close(key, key_ref[me * n : (me + 1) * n])
    # the queue holds both processes' keys, in rank order
    keys = gather(key)
    torch.testing.assert_close(queued[0], keys)
    moco, moco_ref = enc._moco(), ref._moco()
    torch.testing.assert_close(
        moco.queue[landmark][:, : WORLD * n], F.normalize(keys, dim=1).T
    )
    torch.testing.assert_close(moco.queue, moco_ref.queue)
    assert moco.queue_ptr.tolist() == moco_ref.queue_ptr.tolist() == [0, 4, 0]


def _check_globallocal_loss(me):
    """The global loss of 2 processes == 1 process on the whole batch."""
    n, n_views, dim = 4, 2, 5
    gen = torch.Generator().manual_seed(0)
    z_full = torch.randn(n_views, WORLD * n, dim, generator=gen)
    y_full = torch.stack(
        [torch.arange(WORLD * n) // 2, torch.arange(WORLD * n) % 2], 1
    ).float()  # (volume, partition): 2 slices per volume
    rows = slice(me * n, (me + 1) * n)
    for strategy in ("GD", "GR"):
        est = GlobalLocalPretrainer(**GL, strategy=strategy)
        est._initialize_criterion()
        z = z_full[:, rows].reshape(-1, dim).clone().requires_grad_(True)
        loss = est.get_loss(z, y_full[rows], training=True)
        loss.backward()
        est.gather_distributed = False
        Z = z_full.reshape(-1, dim).clone().requires_grad_(True)
        ref = est.get_loss(Z, y_full, training=True)
        ref.backward()
        torch.testing.assert_close(loss, ref)
        # every process backpropagates the global loss (DDP then averages)
        Zg = Z.grad.reshape(n_views, WORLD * n, dim)[:, rows].reshape(-1, dim)
        torch.testing.assert_close(z.grad, WORLD * Zg)
    # official G^D chains: batch-local chain ids become distinct per process
    est = GlobalLocalPretrainer(**GL, strategy="GD", gd_pairing="official")
    est._initialize_criterion()
    z = z_full[:, rows].reshape(-1, dim)
    loss = est.get_loss(z, y_full[rows], training=True)
    # rows [set A | set B] of 2 partitions: ids 0, 0, 1, 1 on every process
    volume = torch.tensor([0, 0, 1, 1] * WORLD) + torch.arange(WORLD).repeat_interleave(
        n
    ) * (2 * WORLD * n)
    z_all = z_full.reshape(-1, dim)
    part = y_full[:, 1].repeat(n_views)
    view = torch.arange(n_views).repeat_interleave(WORLD * n)
    ref = est.criterion_(z_all, volume.repeat(n_views), part, view)
    torch.testing.assert_close(loss, ref)


def _worker(me, world, port, outdir):
    faulthandler.enable(all_threads=True)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(me),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(me),
        LOCAL_WORLD_SIZE=str(world),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    from sklearn_cl3d.distributed import accelerated

    accelerator = Accelerator(
        cpu=True, kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(60))]
    )
    try:
        assert rank() == me
        _check_shuffled_forward(me)
        _check_drasclr_step(me)
        _check_globallocal_loss(me)
        # the real path: DDP and sharded location-major batches; every
        # process pushes the keys of all processes to its queues
        X = _volumes(4, seed=1)
        enc = accelerated(DrasCLREncoder)(
            accelerator=accelerator, **{**DRAS, "device": None}, max_epochs=1
        ).fit(X)
        moco = enc._moco()
        torch.save(
            {
                "queue": moco.queue,
                "ptr": moco.queue_ptr,
                "losses": enc.history[:, "train_loss"],
            },
            os.path.join(outdir, f"rank{me}.pt"),
        )
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # no native teardown at exit: see tests/test_distributed.py
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@pytest.mark.slow
def test_two_processes_gather_drasclr_keys_and_globallocal_embeddings(tmp_path):
    torch.multiprocessing.spawn(
        _worker, args=(WORLD, _free_port(), str(tmp_path)), nprocs=WORLD, join=True
    )
    out = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    # the processes trained on different batches, yet hold the same queues
    torch.testing.assert_close(out[0]["queue"], out[1]["queue"])
    assert out[0]["ptr"].tolist() == out[1]["ptr"].tolist()
    # 4 subjects x 3 landmarks in batches of 2 per process: 6 batches, each
    # process 3; every queue received 4 keys (both processes' batches)
    assert out[0]["ptr"].tolist() == [4, 4, 4]
    assert np.isfinite(out[0]["losses"]).all()


def test_single_process_keys_and_losses_do_not_depend_on_gather_distributed():
    """Outside a process group the flag changes nothing (bit-identical)."""
    X = _volumes(4)
    fits = [
        DrasCLREncoder(**DRAS, max_epochs=1, gather_distributed=flag).fit(X)
        for flag in (True, False)
    ]
    assert fits[0].get_params()["gather_distributed"] is True
    a, b = (f._moco() for f in fits)
    assert torch.equal(a.queue, b.queue)
    assert a.queue_ptr.tolist() == b.queue_ptr.tolist()
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    assert fits[0].history[:, "train_loss"] == fits[1].history[:, "train_loss"]
    gl = GlobalLocalPretrainer(**GL)
    assert gl.get_params()["gather_distributed"] is True
    z, volume, partition = torch.randn(8, 5), torch.arange(4), torch.zeros(4)
    out = gl._gather_global(z, volume, partition, batch_ids=True)
    assert out[0] is z and out[1] is volume and out[2] is partition
