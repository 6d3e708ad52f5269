"""Components and training step of :class:`~sklearn_cl3d.DrasCLREncoder`:
the views and the MoCo network, the query/key/neighbour embeddings of a
location-major batch, the loss with its queue update, the evaluation step
and the query encoder handed to fine-tuning."""

from __future__ import annotations

import copy

import torch
from skorch import NeuralNet
from skorch.dataset import unpack_data

from .. import distributed as _dist
from ..augment import make_augmentation
from ..augment._drasclr import drasclr_augmentation
from ..nn import DrasCLRNet
from ..nn._drasclr import freeze_routing
from ..nn._pooled import LandmarkSetEncoder

__all__ = []

_REP_DIM = 128


class DrasCLRStepMixin:
    """Components, the training step and the fine-tuning encoder of the
    estimator."""

    # ------------------------------------------------------- components

    def initialize(self):
        NeuralNet.initialize(self)
        if isinstance(self.augmentation, str) and self.augmentation == "drasclr":
            self.augment_ = drasclr_augmentation()
        else:
            self.augment_ = make_augmentation(self.augmentation)
        self.normalizer_ = None
        for key in ("_compiled_module", "_grad_scaler"):
            self.__dict__.pop(key, None)
        return self

    def initialize_module(self):
        if not hasattr(self, "landmarks_"):
            raise AttributeError(
                f"{type(self).__name__} builds its network and queues from the "
                "landmarks found in the data: call fit(X) instead of initialize()."
            )
        kwargs = {
            "n_landmarks": self.n_landmarks_,
            "in_channels": self.input_shape_[0],
            "n_experts": self.n_experts,
            "rep_dim": _REP_DIM,
            "projection_dim": self.projection_dim,
            "queue_size": self.queue_size,
            "momentum": self.momentum,
        }
        kwargs.update(self.get_params_for("module"))
        self.module_ = self.initialized_instance(self.module, kwargs)
        if not self.conditioning:
            freeze_routing(self.module_)
        fmt = self._memory_format(5)
        if fmt is not torch.contiguous_format:
            self.module_ = self.module_.to(memory_format=fmt)
        return self

    # -------------------------------------------------------- the step

    def _moco(self):
        """``module_`` without a DistributedDataParallel wrapper."""
        module = self.module_
        while isinstance(module, torch.nn.parallel.DistributedDataParallel):
            module = module.module
        return module

    def _scale(self, x):
        low, high = self._window()
        return x / ((high - low) / 2) - 1

    def _view(self, x):
        if self.augment_ is None:
            return x
        return self.augment_(x, generator=self._generator(x.device))

    def infer(self, x, **fit_params):
        """Query, key and neighbour embeddings of one location-major batch.

        Returns ``(q, k, neighbors, landmark, queued)``: ``q`` and ``k`` of
        shape (B, projection_dim), ``neighbors`` (B, n_neighbors,
        projection_dim); ``queued`` is None, or in a multi-process training
        step with ``gather_distributed`` the keys of all processes (computed
        with shuffle-BN) and their landmarks, for the queues.
        """
        patches = self._to_device(x["patches"]).float()
        nbrs = self._to_device(x["neighbors"]).float()
        # landmark ids stay on the host (no device sync for the routing)
        marks = torch.as_tensor(x["landmark"]).reshape(-1).cpu()
        landmark = int(marks[0])
        if not bool((marks == landmark).all()):
            raise ValueError(
                "DrasCLR batches must be location-major: all anchors of a batch "
                f"at one landmark; got landmarks {sorted(set(marks.tolist()))}."
            )
        batch, k = nbrs.shape[:2]
        locations = torch.as_tensor(self.locations_, device=patches.device)
        neighbors = torch.as_tensor(self.neighbors_[landmark], device=patches.device)
        loc_anchor = locations[landmark].expand(batch, -1)
        loc_nbrs = locations[neighbors].repeat(batch, 1)
        v1 = self._scale(self._view(patches))
        v2 = self._scale(self._view(patches))
        # the k neighbour patches of a subject are channels of one draw
        stacked = nbrs.reshape(batch, -1, *nbrs.shape[3:])
        v3 = self._scale(self._view(stacked)).reshape(batch * k, *nbrs.shape[2:])
        net = self._net()
        with self._autocast():
            q = net(self._as_input(v1), loc_anchor)
            r = net(self._as_input(v3), loc_nbrs).reshape(batch, k, -1)
            moco = self._moco()
            if moco.training:
                moco.momentum_update(self.momentum)
            if moco.training and self._gathers():
                key, queued = self._shuffled_keys(
                    moco, self._as_input(v2), loc_anchor, landmark
                )
            else:
                key = moco.keys(self._as_input(v2), loc_anchor)
                queued = None
        # the loss runs in float32 whatever the autocast precision
        return q.float(), key.float(), r.float(), landmark, queued

    def _gathers(self):
        """Whether keys are shuffled and gathered across processes."""
        return bool(self.gather_distributed) and _dist.is_distributed()

    def _shuffled_keys(self, moco, x, locations, landmark):
        """Keys with shuffle-BN, and the keys and landmarks of all processes.

        Returns ``(key, (keys, landmarks))``: this process's keys in its own
        order, then the keys of every process in rank order with the
        landmark of each row, for the queues.
        """
        gen = self._generator(x.device)

        def float_keys(x, locations):  # gathered in float32 (any backend)
            return moco.keys(x, locations).float()

        key, keys = _dist.shuffled_forward(float_keys, x, locations, generator=gen)
        marks = torch.full((x.shape[0],), landmark, dtype=torch.long, device=x.device)
        return key, (keys, _dist.gather(marks).cpu())

    def get_loss(self, y_pred, y_true, X=None, training=False):
        q, key, neighbors, landmark, queued = y_pred
        moco = self._moco()
        queue = moco.queue[landmark].clone()
        local, neighbor, total = self.criterion_(q, key, neighbors, queue)
        if training:
            self._enqueue(moco, key, landmark, queued)
            if self.history:
                self.history.record_batch("local_loss", float(local.detach()))
                self.history.record_batch("neighbor_loss", float(neighbor.detach()))
        return total

    @staticmethod
    def _enqueue(moco, key, landmark, queued):
        """Push this process's keys, or those of all processes (``queued``)."""
        if queued is None:
            moco.enqueue(key, landmark)
            return
        # the keys of all processes, each landmark's in rank order (the
        # processes of one step usually share the landmark)
        keys, marks = queued
        for mark in dict.fromkeys(marks.tolist()):
            moco.enqueue(keys[(marks == mark).to(keys.device)], mark)

    def evaluation_step(self, batch, training=False):
        self.check_is_fitted()
        Xi, _ = unpack_data(batch)
        patches = self._to_device(Xi["patches"]).float()
        marks = self._to_device(Xi["landmark"]).long()
        locations = torch.as_tensor(self.locations_, device=patches.device)[marks]
        with torch.set_grad_enabled(training):
            self._set_training(training)
            x = self._as_input(self._scale(patches))
            with self._autocast():
                out = self._moco().encode(x, locations)
            return out.float()

    # ------------------------------------------------------ fine-tuning

    def _finetune_encoder(self, *, pretrained, pooling):
        """Per-volume backbone for FineTunedClassifier/FineTunedRegressor.

        The query encoder (MoCo head, key network and queues dropped) on the
        patches at every landmark, with their locations, then pooled over
        the landmarks.
        """
        if pretrained:
            net = copy.deepcopy(self._moco().query)
        else:
            kwargs = {
                "in_channels": self.input_shape_[0],
                "n_experts": self.n_experts,
                "rep_dim": _REP_DIM,
                "projection_dim": self.projection_dim,
            }
            net = DrasCLRNet(**kwargs)
            if not self.conditioning:
                freeze_routing(net)
        del net.head  # the MoCo head plays no part in the representation
        if pooling == "auto":
            pooling = "max" if self.pooling == "max" else "mean"
        return LandmarkSetEncoder(net, self.locations_, pooling=pooling)
