"""Contrastive self-supervised pretraining for 3D medical images, as
scikit-learn estimators trained with skorch on PyTorch."""

__version__ = "0.1.0.dev0"
