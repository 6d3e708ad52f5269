"""Components and training step of
:class:`~sklearn_cl3d.GlobalLocalPretrainer`: the network, both criteria,
the parameters each stage trains, the views and losses of a step, and a
stage's run."""

from __future__ import annotations

import torch
from skorch import NeuralNet
from skorch.dataset import unpack_data
from skorch.utils import to_tensor

from .. import distributed as _dist
from ..augment._intensity import globallocal_views
from ..losses import (
    LocalContrastiveLoss,
)

__all__ = []

#: (original slice included, number of augmented views) per global strategy,
#: as the official batches: G^R two views, G^D- the slice and two views,
#: G^D the slice and one view.
_GLOBAL_VIEWS = {"GR": (False, 2), "GD-": (True, 2), "GD": (True, 1)}



def _same_config(a, b):
    """Whether two keyword dictionaries hold the same values."""
    if a.keys() != b.keys():
        return False
    for key, x in a.items():
        y = b[key]
        if x is y:
            continue
        try:
            if not bool(x == y):
                return False
        except Exception:  # e.g. tensors of other shapes: not the same
            return False
    return True

class GlobalLocalStepMixin:
    """Components, the training step and the stage runs of the pretrainer."""

    # ------------------------------------------------------- components

    def initialize(self):
        NeuralNet.initialize(self)
        self.augment_ = globallocal_views(
            self.augmentation, "global", self.official_intensity
        )
        self.local_augment_ = globallocal_views(
            self.local_augmentation, "local", self.official_intensity
        )
        self.normalizer_ = None  # the scaling is done per volume on loading
        for key in ("_compiled_module", "_grad_scaler"):
            self.__dict__.pop(key, None)
        self.stages_ = ()
        return self

    def initialize_module(self):
        if not hasattr(self, "network_input_shape_"):
            raise AttributeError(
                f"{type(self).__name__} builds its network from the shape of X: "
                "call fit(X) instead of initialize()."
            )
        shape = self.network_input_shape_
        kwargs = {
            "dims": self._dims,
            "in_channels": shape[0],
            "channels": tuple(self.channels),
            "input_size": shape[1:],
            "hidden_dim": self.hidden_dim,
            "out_dim": self.projection_dim,
            "n_decoder_blocks": self.n_decoder_blocks,
        }
        kwargs.update(self.get_params_for("module"))
        self.module_ = self.initialized_instance(self.module, kwargs)
        fmt = self._memory_format(len(shape) + 1)
        if fmt is not torch.contiguous_format:
            self.module_ = self.module_.to(memory_format=fmt)
        return self

    def _n_negatives(self):
        """``n_negatives``, or the official value of the local strategy."""
        if self.n_negatives is not None:
            return self.n_negatives
        return 4 if self.local == "LD" else 5

    def _criterion_kwargs(self):
        kwargs = {
            "strategy": self.strategy or "GD",
            "temperature": self.temperature,
            "pairing": self.gd_pairing,
        }
        kwargs.update(self.get_params_for("criterion"))
        return kwargs

    def _local_criterion_kwargs(self):
        channels = tuple(self.channels)
        local = {
            "temperature": self.temperature,
            "strategy": self.local or "LR",
            "region_size": self.region_size,
            "regions": self.regions,
            "n_negatives": self._n_negatives(),
            "in_channels": channels[-1 - self.n_decoder_blocks],
            "out_features": self.region_dim,
        }
        local.update(self.get_params_for("local_criterion"))
        return local

    def initialize_criterion(self):
        kwargs = self._criterion_kwargs()
        self.criterion_ = self.initialized_instance(self.criterion, kwargs)
        local = self._local_criterion_kwargs()
        self.local_criterion_ = LocalContrastiveLoss(**local)
        # what the losses were built from (see _sync_criteria)
        self.__dict__["_criterion_config"] = (kwargs, local)
        return self

    def _sync_criteria(self):
        """Rebuild the losses if a parameter they are built from changed.

        ``set_params(local="LD")`` (or ``n_negatives``, ``temperature``,
        ``strategy``, ...) between ``partial_fit`` calls must reach the
        losses; the local loss keeps its trained W when its shape allows.
        """
        built = self.__dict__.get("_criterion_config")
        current = (self._criterion_kwargs(), self._local_criterion_kwargs())
        if built is not None and all(map(_same_config, built, current)):
            return
        old_local = self.local_criterion_
        self._initialize_criterion(
            reason="Re-initializing the losses: a parameter they are built from "
            "changed (the local loss keeps its W)."
        )
        state = old_local.state_dict()
        new = self.local_criterion_.state_dict()
        if state.keys() == new.keys() and all(
            state[k].shape == new[k].shape for k in state
        ):
            self.local_criterion_.load_state_dict(state)

    def get_all_learnable_params(self):
        """The parameters the current stage trains.

        Global stage: the encoder and g1. Local stage: the first
        ``n_decoder_blocks`` decoder blocks, g2 and the local criterion's W.
        """
        net = self._bare_module()
        if self.__dict__.get("_stage", "global") == "global":
            parts = [
                ("unet.encoder", net.unet.encoder),
                ("global_head", net.global_head),
            ]
        else:
            blocks = net.unet.decoder_blocks[: self.n_decoder_blocks]
            parts = [
                ("unet.decoder_blocks", blocks),
                ("local_head", net.local_head),
                ("local_criterion", self.local_criterion_),
            ]
        for prefix, module in parts:
            for name, param in module.named_parameters():
                yield f"{prefix}.{name}", param

    def on_epoch_begin(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        super().on_epoch_begin(net, dataset_train, dataset_valid, **kwargs)
        self.history.record("stage", self.__dict__.get("_stage"))

    # -------------------------------------------------------- the step

    def _global_views(self, x, gen):
        with_original, n_augmented = _GLOBAL_VIEWS[self.strategy]
        views = [x] if with_original else []
        for _ in range(n_augmented):
            views.append(
                x if self.augment_ is None else self.augment_(x, generator=gen)
            )
        return views

    def infer(self, x, **fit_params):
        """Global stage: g1 embeddings of all views, rows ``[view 0 | view 1
        | ...]``. Local stage: g2 maps of the two intensity views."""
        x = self._prepare(x)
        gen = self._generator(x.device)
        net = self._net()
        if self.__dict__.get("_stage", "global") == "global":
            batch = torch.cat(self._global_views(x, gen))
            with self._autocast():
                z = net(self._as_input(batch), mode="global", **fit_params)
            return z.float()
        views = [
            x if self.local_augment_ is None else self.local_augment_(x, generator=gen)
            for _ in range(2)
        ]
        if self.freeze_encoder_bn:
            self._bare_module().unet.encoder.eval()
        with self._autocast():
            f = net(self._as_input(torch.cat(views)), mode="local", **fit_params)
        f1, f2 = f.float().chunk(2)
        return f1, f2

    def get_loss(self, y_pred, y_true, X=None, training=False):
        if self.__dict__.get("_stage", "global") == "global":
            z = y_pred
            target = to_tensor(y_true, device=z.device)
            n = target.shape[0]
            n_views = z.shape[0] // n
            volume, partition = target[:, 0], target[:, 1]
            if self.strategy == "GR":
                volume = torch.arange(n, device=z.device)  # one "volume" per slice
            elif self._official_gd("global"):
                # rows [set A | set B], S per volume: chain ids 2v (A), 2v + 1 (B)
                row, half = torch.arange(n, device=z.device), n // 2
                volume = 2 * ((row % half) // self.n_partitions) + row // half
            batch_ids = self.strategy == "GR" or self._official_gd("global")
            z, volume, partition = self._gather_global(z, volume, partition, batch_ids)
            n = volume.shape[0]
            view = torch.arange(n_views, device=z.device).repeat_interleave(n)
            return self.criterion_(
                z, volume.repeat(n_views), partition.repeat(n_views), view
            )
        f1, f2 = y_pred
        target = to_tensor(y_true, device=f1.device)
        volume, partition = target[:, 0], target[:, 1]
        if f1.ndim == 5:
            # 3-D maps: every depth plane is a 2-D map of its own
            n, c, d = f1.shape[:3]
            f1 = f1.transpose(1, 2).reshape(n * d, c, *f1.shape[3:])
            f2 = f2.transpose(1, 2).reshape(n * d, c, *f2.shape[3:])
            depth = torch.arange(d, device=f1.device).repeat(n)
            volume = volume.repeat_interleave(d)
            partition = partition.repeat_interleave(d) * d + depth
        return self.local_criterion_(f1, f2, volume, partition)

    def _gather_global(self, z, volume, partition, batch_ids):
        """The global batch of a multi-process run for the global loss.

        ``z`` has rows ``[view 0 | view 1 | ...]`` of the local slices; each
        view's rows are gathered (with gradients) in rank order, so the
        result has the same layout over the slices of all processes. Volume
        ids numbered within the batch (``batch_ids``: G^R, official G^D
        chains) are made distinct across processes; dataset volume ids are
        kept. Outside a process group of more than one process, or with
        ``gather_distributed=False``, the inputs come back unchanged.
        """
        if not (self.gather_distributed and _dist.is_distributed()):
            return z, volume, partition
        n = volume.shape[0]
        views = z.reshape(z.shape[0] // n, n, *z.shape[1:])
        z = torch.cat([_dist.gather_with_grad(v) for v in views.unbind(0)])
        if batch_ids:
            # ids stay below 2n <= 2 * n_global: offset every process's
            volume = volume.long()
            total = int(_dist.gather(torch.tensor([n], device=z.device)).sum())
            volume = volume + _dist.rank() * 2 * total
        return z, _dist.gather(volume), _dist.gather(partition)

    def evaluation_step(self, batch, training=False):
        self.check_is_fitted()
        Xi, _ = unpack_data(batch)
        with torch.set_grad_enabled(training):
            self._set_training(training)
            x = self._as_input(self._prepare(Xi))
            with self._autocast():
                out = self._bare_module().features(x, self.feature_layer)
            return out.float()

    # ------------------------------------------------------- stages

    def _run_stage(self, dataset, stage, epochs, fit_params):
        self.__dict__["_stage"] = stage
        if stage == "global":
            reason = "Stage 'global': training the encoder and g1."
        else:
            reason = (
                f"Stage 'local': training decoder blocks 1-{self.n_decoder_blocks}, "
                "g2 and W; encoder frozen."
            )
        self._initialize_optimizer(reason=reason)
        encoder = self._bare_module().unet.encoder
        frozen = stage == "local"
        if frozen:
            encoder.requires_grad_(False)
        try:
            NeuralNet.partial_fit(self, dataset, None, epochs=epochs, **fit_params)
        finally:
            if frozen:
                encoder.requires_grad_(True)
        if stage not in self.stages_:
            self.stages_ = (*self.stages_, stage)
