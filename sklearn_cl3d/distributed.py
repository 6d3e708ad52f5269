"""Multi-process (multi-GPU, multi-node) pretraining helpers.

Contrastive losses compare every embedding of a batch with every other one,
so when a batch is split over several processes (``torchrun``,
``accelerate launch``), each process must see the embeddings **and** the
metadata of the whole global batch; otherwise the negatives (and, for
y-Aware, the kernel weights) only span the local shard.

* :func:`gather_with_grad` concatenates a tensor from all processes and lets
  gradients flow back to the process that produced each row.
* :func:`gather` does the same without gradients (metadata, labels).
* :func:`shuffled_forward` runs a no-gradient forward on the global batch
  shuffled across processes (MoCo's "shuffle-BN" for a key encoder).
* :func:`accelerated` adds skorch's ``AccelerateMixin`` (Hugging Face
  Accelerate: DDP, sharded data loading, mixed precision) to a pretrainer.

The pretrainers call these through ``gather_distributed=True`` (the default):
outside a process group of more than one process everything here is the
identity, so single-process code is unchanged.

Gradient of :func:`gather_with_grad`: every process computes the same global
loss, so the gradient of a local row is the sum of that loss's gradient over
the processes (an all-reduce), i.e. ``world_size`` times the single-process
gradient; DistributedDataParallel then averages parameter gradients over the
``world_size`` processes, and the update equals one step of a single process
on the whole global batch.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist

__all__ = [
    "accelerated",
    "gather",
    "gather_with_grad",
    "is_distributed",
    "rank",
    "shuffled_forward",
    "world_size",
]


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process.

    Returns
    -------
    bool

    Examples
    --------
    >>> is_distributed()
    False
    """
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes in the default process group (1 without one).

    Returns
    -------
    int

    Examples
    --------
    >>> world_size()
    1
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def rank() -> int:
    """Rank of this process in the default process group (0 without one).

    Returns
    -------
    int

    Examples
    --------
    >>> rank()
    0
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


def _all_sizes(n: int, device) -> list[int]:
    """Number of rows of every process's tensor, in rank order."""
    local = torch.tensor([n], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, local)
    return [int(s.item()) for s in sizes]


def _all_gather_rows(tensor: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Concatenate ``tensor`` of every process along dim 0 (sizes may differ)."""
    longest = max(sizes)
    padded = tensor.contiguous()
    if tensor.shape[0] < longest:
        pad = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
        padded = torch.cat([padded, pad])
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


class _GatherWithGrad(torch.autograd.Function):
    """All-gather in the forward pass; all-reduce and slice in the backward."""

    @staticmethod
    def forward(ctx, tensor):
        sizes = _all_sizes(tensor.shape[0], tensor.device)
        me = dist.get_rank()
        ctx.start = sum(sizes[:me])
        ctx.stop = ctx.start + sizes[me]
        return _all_gather_rows(tensor, sizes)

    @staticmethod
    def backward(ctx, grad_output):
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start : ctx.stop]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from all processes, keeping gradients.

    Rows are concatenated in rank order (the local rows at the offset of this
    rank). In the backward pass the gradient of the gathered tensor is summed
    over processes and each process keeps the slice of its own rows, so that
    with DistributedDataParallel's gradient averaging the parameter update
    equals a single process's update on the global batch. Every process must
    call it, in the same order; the number of rows may differ between
    processes. Outside a process group of more than one process this returns
    ``tensor`` itself.

    Parameters
    ----------
    tensor : torch.Tensor of shape (n, ...)
        The local rows (e.g. this process's embeddings).

    Returns
    -------
    torch.Tensor of shape (n_global, ...)

    Examples
    --------
    >>> import torch
    >>> z = torch.ones(2, 3, requires_grad=True)
    >>> gather_with_grad(z) is z  # a single process: the identity
    True
    """
    if not is_distributed():
        return tensor
    return _GatherWithGrad.apply(tensor)


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from all processes, without gradients.

    For metadata, labels and positions that go with gathered embeddings (the
    same rank order as :func:`gather_with_grad`). Boolean tensors are
    supported. Outside a process group of more than one process this returns
    ``tensor`` itself.

    Parameters
    ----------
    tensor : torch.Tensor of shape (n, ...)

    Returns
    -------
    torch.Tensor of shape (n_global, ...)

    Examples
    --------
    >>> import torch
    >>> gather(torch.arange(3)).tolist()
    [0, 1, 2]
    """
    if not is_distributed():
        return tensor
    with torch.no_grad():
        flag = tensor.dtype == torch.bool
        local = tensor.detach().to(torch.uint8) if flag else tensor.detach()
        out = _all_gather_rows(local, _all_sizes(local.shape[0], local.device))
        return out.bool() if flag else out


def shuffled_forward(fn, *tensors, generator=None):
    """``fn(*tensors)`` on the global batch shuffled across processes.

    MoCo's "shuffle-BN" for a momentum (key) encoder with per-process
    BatchNorm: the rows of all processes are gathered, permuted by one
    random permutation (rank 0's, broadcast), and every process runs ``fn``
    on its share of the permuted rows, so that the BatchNorm statistics of a
    process mix samples of all processes. The outputs are gathered and put
    back in the original order. Runs without gradients. Every process must
    call it, in the same order; the number of rows may differ between
    processes. Outside a process group of more than one process this is
    ``fn(*tensors)``, returned twice.

    Parameters
    ----------
    fn : callable
        Maps tensors of ``m`` rows each to an output of ``m`` rows.
    *tensors : torch.Tensor of shape (n, ...)
        This process's rows (e.g. the key view and the patch locations).
    generator : torch.Generator or None, default=None
        Draws the permutation (only rank 0's draw is used).

    Returns
    -------
    local : torch.Tensor of shape (n, ...)
        ``fn``'s output for this process's rows, in their order.
    everyone : torch.Tensor of shape (n_global, ...)
        The outputs of all processes' rows in rank order (the gathered
        ``local``).

    Examples
    --------
    >>> import torch
    >>> x = torch.arange(6.0).reshape(3, 2)
    >>> local, everyone = shuffled_forward(lambda t: 2 * t, x)
    >>> local.tolist() == everyone.tolist() == (2 * x).tolist()
    True
    """
    if not is_distributed():
        with torch.no_grad():
            out = fn(*tensors)
        return out, out
    with torch.no_grad():
        device = tensors[0].device
        sizes = _all_sizes(tensors[0].shape[0], device)
        me = dist.get_rank()
        start = sum(sizes[:me])
        gen_device = generator.device if generator is not None else "cpu"
        perm = torch.randperm(sum(sizes), generator=generator, device=gen_device)
        perm = perm.to(device)
        dist.broadcast(perm, src=0)
        everything = [gather(t) for t in tensors]
        mine = perm[start : start + sizes[me]]
        out = gather(fn(*(t[mine] for t in everything)))  # rows perm[0], ...
        everyone = torch.empty_like(out)
        everyone[perm] = out
        return everyone[start : start + sizes[me]], everyone


# ------------------------------------------------------------ accelerate


def _autocast_off(device_type):
    try:
        return torch.autocast(device_type, enabled=False)
    except RuntimeError:  # a device type without autocast support
        return nullcontext()


def _noop(*args, **kwargs):
    return None


@functools.cache
def _accelerate_base():
    """The mixin that adapts skorch's AccelerateMixin to the pretrainers."""
    try:
        from skorch.hf import AccelerateMixin
    except ImportError as exc:  # pragma: no cover - skorch always ships it
        raise ImportError("accelerated() needs skorch.hf.AccelerateMixin") from exc

    class _AcceleratedPretrainer(AccelerateMixin):
        # AccelerateMixin.initialize re-implements NeuralNet.initialize, which
        # would skip the pretrainer's own initialize (views, normaliser): run
        # the pretrainer's, then prepare the components with the accelerator.
        def initialize(self):
            self._wrapped_with_accelerator = False  # refits prepare new modules
            super(AccelerateMixin, self).initialize()
            self._initialize_accelerator()
            return self

        def get_default_callbacks(self):
            callbacks = super().get_default_callbacks()
            if self.accelerator.is_local_main_process:
                return callbacks
            return [(n, cb) for n, cb in callbacks if n != "progress_bar"]

        def _initialize_callbacks(self):
            # AccelerateMixin's "auto" sink (the accelerator's print, main
            # process only) would print the epoch table even with verbose=0
            auto = self.callbacks__print_log__sink == "auto"
            if auto:
                self.callbacks__print_log__sink = (
                    self.accelerator.print if self.verbose else _noop
                )
            try:
                return super()._initialize_callbacks()
            finally:
                if auto:
                    self.callbacks__print_log__sink = "auto"

        def _initialize_accelerator(self):
            # DistributedDataParallel refuses modules without trainable
            # parameters, such as the losses: leave those unprepared
            names = self._criteria
            self._criteria = [
                name
                for name in names
                if any(p.requires_grad for p in getattr(self, name + "_").parameters())
            ]
            try:
                return super()._initialize_accelerator()
            finally:
                self._criteria = names

        @contextmanager
        def _on_device(self):
            with super()._on_device() as device:
                if device is None:
                    device = str(self.accelerator.device)
                yield device

        def get_loss(self, y_pred, y_true, X=None, training=False):
            # accelerate's autocast covers the loss too; keep it in float32
            kind = next(self.module_.parameters()).device.type
            with _autocast_off(kind):
                return super().get_loss(y_pred, y_true, X=X, training=training)

    return _AcceleratedPretrainer


@functools.cache
def accelerated(cls):
    """A pretrainer class trained through Hugging Face Accelerate.

    Returns a subclass of ``cls`` with skorch's
    :class:`~skorch.hf.AccelerateMixin`: pass an ``accelerate.Accelerator``
    as ``accelerator=`` and leave ``device=None`` (the default of the new
    class; the accelerator places the data and the model). Under
    ``accelerate launch`` or ``torchrun`` with several processes, the
    accelerator wraps the network in DistributedDataParallel and shards each
    epoch over the processes (``batch_size`` is then per process), and the
    loss gathers embeddings and metadata from all processes
    (``gather_distributed=True``), so every process logs the same global
    loss. Mixed precision is the accelerator's (``mixed_precision="bf16"``;
    the estimator's ``precision`` has no effect with ``device=None``); the
    loss still runs in float32. Only the first process of each machine
    prints the epoch table and progress bar (with ``verbose=1``).

    Such estimators cannot be pickled (the accelerator holds weak
    references): save them with ``save_params``/``load_params`` and do not
    use them with ``n_jobs > 1`` or ``Pipeline(memory=...)``. ``clone`` works.

    Parameters
    ----------
    cls : type
        A pretrainer class, e.g. :class:`~sklearn_cl3d.YAwarePretrainer`.

    Returns
    -------
    type
        ``Accelerated<cls name>``; the same class object for the same ``cls``.

    Examples
    --------
    >>> from sklearn_cl3d import YAwarePretrainer
    >>> from sklearn_cl3d.distributed import accelerated
    >>> accelerated(YAwarePretrainer).__name__
    'AcceleratedYAwarePretrainer'
    """
    name = f"Accelerated{cls.__name__}"
    doc = (
        f"{cls.__name__} trained through Hugging Face Accelerate (see "
        ":func:`sklearn_cl3d.distributed.accelerated`)."
    )
    return type(
        name,
        (_accelerate_base(), cls),
        {"__doc__": doc, "__module__": __name__, "__qualname__": name},
    )
