"""Saved encoders (save_pretrained / load_pretrained) and plain state dicts
with key maps (the official y-Aware layout). Attacks on saved folders are in
test_persistence_security.py, crash safety in test_persistence_atomic.py,
checkpoints in test_checkpoint.py."""

import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from sklearn_cl3d import (
    FineTunedClassifier,
    SimCLRPretrainer,
    WSPPretrainer,
    YAwarePretrainer,
    load_pretrained,
    load_state_dict,
    save_pretrained,
)
from sklearn_cl3d._persistence import CONFIG_NAME, WEIGHTS_NAME, yaware_key_map
from sklearn_cl3d.callbacks import AtomicCheckpoint
from sklearn_cl3d.data import CropOrPad
from sklearn_cl3d.nn import DenseNet3D, SmallCNN3D
from sklearn_cl3d.persistence import MANIFEST_NAME, PersistenceError

SMALL3D = dict(
    backbone="small3d",
    backbone__channels=(4, 8),
    hidden_dim=8,
    projection_dim=4,
    batch_size=8,
    max_epochs=1,
    random_state=0,
)
TINY_DENSENET = dict(
    backbone="densenet",
    backbone__growth_rate=4,
    backbone__block_config=(1, 1),
    backbone__num_init_features=8,
    backbone__bn_size=2,
    hidden_dim=8,
    projection_dim=4,
)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(16, 1, 10, 10, 10)).astype(np.float32)
    age = rng.uniform(20, 80, size=16)
    return X, age


def _state(module):
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


class MyEncoder(nn.Module):
    """A user backbone outside the trusted packages."""

    def __init__(self, in_channels=1, width=4):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, width, 3)
        self.out_features = width

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3, 4))


# ------------------------------------------------------ saved encoders


def test_round_trip_restores_weights_params_and_transform(tmp_path, data):
    X, age = data
    ssl = YAwarePretrainer(
        **SMALL3D,
        callbacks=[("cp", AtomicCheckpoint(dirname=str(tmp_path / "cp")))],
        sigma=3.0,
        feature_layer="hidden",
        preprocessing=[CropOrPad((8,) * 3)],
    ).fit(X, age)
    path = ssl.save_pretrained(tmp_path / "enc")
    assert sorted(os.listdir(path)) == [CONFIG_NAME, MANIFEST_NAME, WEIGHTS_NAME]
    assert sorted(os.listdir(tmp_path)) == ["cp", "enc"]  # no temporary folder
    config = json.loads((path / CONFIG_NAME).read_text())
    assert config["class"] == "sklearn_cl3d:YAwarePretrainer"
    assert config["format_version"] == 2
    assert config["params"]["sigma"] == 3.0
    assert config["params"]["optimizer"] == {"__object__": "torch.optim:Adam"}
    assert "callbacks" not in config["params"]  # training-session objects
    assert "torch_load_kwargs" not in config["params"]  # loader settings

    again = YAwarePretrainer.load_pretrained(path)
    _assert_same(_state(again.module_), _state(ssl.module_))
    np.testing.assert_array_equal(again.transform(X), ssl.transform(X))
    params, loaded = ssl.get_params(deep=False), again.get_params(deep=False)
    assert loaded.keys() == params.keys()
    for key in ("sigma", "backbone__channels", "feature_layer", "optimizer", "lr"):
        assert loaded[key] == params[key]
    assert isinstance(loaded["preprocessing"][0], CropOrPad)
    assert loaded["preprocessing"][0].shape == (8, 8, 8)
    assert again.input_shape_ == ssl.input_shape_
    # training goes on from the loaded weights
    again.set_params(max_epochs=1).partial_fit(X, age)
    assert len(again.history) == 1
    # overrides
    assert load_pretrained(path, feature_layer="backbone").transform(X).shape == (
        16,
        8,
    )


def test_wrong_class_unfitted_and_not_a_directory(tmp_path, data):
    X, _ = data
    simclr = SimCLRPretrainer(**SMALL3D).fit(X)
    path = save_pretrained(simclr, tmp_path / "simclr")
    with pytest.raises(ValueError, match="holds a SimCLRPretrainer"):
        YAwarePretrainer.load_pretrained(path)
    assert isinstance(load_pretrained(path), SimCLRPretrainer)
    with pytest.raises(ValueError, match="not fitted"):
        SimCLRPretrainer().save_pretrained(tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="not a directory"):
        simclr.save_pretrained(tmp_path / "file")


def test_wsp_round_trip_keeps_slice_attributes(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(8, 12, 12, 10)).astype(np.float32)
    wsp = WSPPretrainer(
        backbone="resnet18",
        slice_size=16,
        hidden_dim=8,
        projection_dim=4,
        max_epochs=1,
        batch_size=4,
        random_state=0,
    ).fit(X, ["a", "b"] * 4)
    again = load_pretrained(wsp.save_pretrained(tmp_path / "wsp"))
    assert list(again.weak_classes_) == ["a", "b"]
    np.testing.assert_array_equal(again.slice_positions_, wsp.slice_positions_)
    np.testing.assert_array_equal(again.transform(X), wsp.transform(X))


def test_non_json_parameters(tmp_path, data):
    X, age = data
    # a lambda cannot be stored: clear error naming the parameter
    ssl = YAwarePretrainer(**SMALL3D, kernel=lambda a, b, sigma: a @ b.T).fit(X, age)
    with pytest.raises(ValueError, match="kernel: .*lambda"):
        ssl.save_pretrained(tmp_path / "a")
    path = ssl.save_pretrained(tmp_path / "a", exclude=["kernel"])
    assert load_pretrained(path).kernel == "rbf"  # the class default
    # a module-level class is stored as its import path
    rng = np.random.RandomState(0)
    ssl = YAwarePretrainer(**{**SMALL3D, "backbone": SmallCNN3D, "random_state": rng})
    with pytest.raises(ValueError, match="random_state"):
        ssl.fit(X, age).save_pretrained(tmp_path / "b")
    path = ssl.save_pretrained(tmp_path / "b", exclude=("random_state",))
    assert load_pretrained(path).backbone is SmallCNN3D


def test_own_classes_are_passed_at_load_time(tmp_path, data):
    X, age = data
    ssl = YAwarePretrainer(
        backbone=MyEncoder,
        backbone__width=3,
        hidden_dim=4,
        projection_dim=2,
        max_epochs=1,
        batch_size=8,
        random_state=0,
    ).fit(X, age)
    path = ssl.save_pretrained(tmp_path / "mine")
    config = json.loads((path / CONFIG_NAME).read_text())
    assert config["params"]["backbone"] == {"__object__": f"{__name__}:MyEncoder"}
    # nothing is imported from the file: the class must come from the caller
    with pytest.raises(PersistenceError, match="custom_objects={'MyEncoder'"):
        load_pretrained(path)
    for again in (
        load_pretrained(path, custom_objects={"MyEncoder": MyEncoder}),
        load_pretrained(path, custom_objects={f"{__name__}:MyEncoder": MyEncoder}),
        load_pretrained(path, backbone=MyEncoder),
        YAwarePretrainer.load_pretrained(path, custom_objects={"MyEncoder": MyEncoder}),
    ):
        assert again.backbone is MyEncoder
        np.testing.assert_array_equal(again.transform(X), ssl.transform(X))
    # a caller's class never replaces a library one of the same short name
    impostor = {"YAwarePretrainer": SimCLRPretrainer, "MyEncoder": MyEncoder}
    assert type(load_pretrained(path, custom_objects=impostor)) is YAwarePretrainer
    with pytest.raises(TypeError, match="custom_objects"):
        load_pretrained(path, custom_objects=[MyEncoder])
    with pytest.raises(TypeError, match="custom_objects\\['MyEncoder'\\]"):
        load_pretrained(path, custom_objects={"MyEncoder": "MyEncoder"})


class MyYAware(YAwarePretrainer):
    """A user subclass of a pretrainer."""


def test_own_pretrainer_subclass(tmp_path, data):
    X, age = data
    ssl = MyYAware(**SMALL3D).fit(X, age)
    path = ssl.save_pretrained(tmp_path / "sub")
    with pytest.raises(PersistenceError, match="MyYAware"):
        load_pretrained(path)
    # its own load_pretrained knows the class; the function needs it passed
    for again in (
        MyYAware.load_pretrained(path),
        load_pretrained(path, custom_objects={"MyYAware": MyYAware}),
    ):
        assert type(again) is MyYAware
        np.testing.assert_array_equal(again.transform(X), ssl.transform(X))
    # a class given by the caller must still be a pretrainer
    with pytest.raises(PersistenceError, match="not a contrastive pretrainer"):
        load_pretrained(path, custom_objects={"MyYAware": MyEncoder})


def test_trust_imports_is_gone(tmp_path, data):
    X, age = data
    path = YAwarePretrainer(**SMALL3D).fit(X, age).save_pretrained(tmp_path / "e")
    with pytest.raises(ValueError, match="no longer supported.*custom_objects"):
        load_pretrained(path, trust_imports=True)
    with pytest.raises(ValueError, match="no longer supported"):
        YAwarePretrainer.load_pretrained(path, trust_imports=True)
    with pytest.warns(FutureWarning, match="trust_imports is deprecated"):
        load_pretrained(path, trust_imports=False)


def test_weights_are_loaded_with_weights_only(tmp_path, data, monkeypatch):
    X, age = data
    path = YAwarePretrainer(**SMALL3D).fit(X, age).save_pretrained(tmp_path / "e")
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_pretrained(path)
    assert calls == [True]
    monkeypatch.undo()
    # (a weights file holding a pickled object: test_persistence_security.py)


# -------------------------------------------- plain state dicts and key maps


class OfficialYAwareDenseNet(nn.Module):
    """Official y-Aware encoder-mode layout: features + hidden_representation +
    head_projection at the top level (sizes of our tiny DenseNet)."""

    def __init__(self, mode="encoder", num_classes=2):
        super().__init__()
        dense = DenseNet3D(
            growth_rate=4,
            block_config=(1, 1),
            num_init_features=8,
            bn_size=2,
            final_norm=mode == "classifier",
        )
        self.features = dense.features
        if mode == "encoder":
            self.hidden_representation = nn.Linear(dense.out_features, 8)
            self.head_projection = nn.Linear(8, 4)
        else:
            self.classifier = nn.Linear(dense.out_features, num_classes)


def _official_checkpoint(path, mode="encoder"):
    torch.manual_seed(1)
    net = nn.DataParallel(OfficialYAwareDenseNet(mode))  # keys "module.*"
    for p in net.parameters():
        p.data.normal_()
    optimizer = torch.optim.Adam(net.parameters())
    torch.save(
        {"epoch": 99, "model": net.state_dict(), "optimizer": optimizer.state_dict()},
        path,
    )
    return net.module


def test_official_yaware_checkpoint_loads_into_an_unfitted_pretrainer(tmp_path, data):
    X, _ = data
    official = _official_checkpoint(tmp_path / "official.pth")
    assert yaware_key_map("module.features.conv0.weight") == (
        "backbone.features.conv0.weight"
    )
    ssl = YAwarePretrainer(**TINY_DENSENET)
    result = load_state_dict(
        ssl, tmp_path / "official.pth", key_map="yaware", input_shape=(1, 10, 10, 10)
    )
    assert not result.missing_keys and not result.unexpected_keys
    ours = ssl.module_
    torch.testing.assert_close(
        ours.backbone.features.conv0.weight, official.features.conv0.weight
    )
    torch.testing.assert_close(
        ours.head.head_projection.bias, official.head_projection.bias
    )
    assert ssl.transform(X).shape == (16, official.hidden_representation.in_features)
    # without the key map nothing matches: a clear error, even non-strict
    with pytest.raises(ValueError, match="key_map='yaware'"):
        load_state_dict(ssl, tmp_path / "official.pth", strict=False)


def test_official_classifier_checkpoint_into_fine_tuning_network(tmp_path, data):
    X, _ = data
    y = np.array([0, 1] * 8)
    official = _official_checkpoint(tmp_path / "clf.pth", mode="classifier")
    clf = FineTunedClassifier(
        **{k: v for k, v in TINY_DENSENET.items() if "_dim" not in k},
        max_epochs=0,
        random_state=0,
    ).fit(X, y)
    load_state_dict(clf, tmp_path / "clf.pth", key_map="yaware")
    torch.testing.assert_close(clf.module_.head.weight, official.classifier.weight)
    torch.testing.assert_close(
        clf.module_.backbone.features.norm5.weight, official.features.norm5.weight
    )


def test_key_maps_dict_callable_and_errors(data):
    X, age = data
    src = YAwarePretrainer(**SMALL3D).fit(X, age)
    dst = YAwarePretrainer(**{**SMALL3D, "random_state": 1}).fit(X, age)
    sd = {"enc." + k: v for k, v in src.module_.backbone.state_dict().items()}
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unexpected 1"):
        load_state_dict(dst.module_.backbone, sd, key_map={"enc.": ""})
    result = load_state_dict(
        dst.module_.backbone, sd, key_map={"enc.": "", "extra.": None}
    )
    assert not result.missing_keys
    _assert_same(_state(dst.module_.backbone), _state(src.module_.backbone))
    # a callable, non-strict, loading the backbone into the whole network
    result = load_state_dict(
        dst,
        {"m." + k: v for k, v in src.module_.backbone.state_dict().items()},
        key_map=lambda k: "backbone." + k[2:],
        strict=False,
    )
    assert result.missing_keys and all(
        k.startswith("head.") for k in result.missing_keys
    )
    bad = {k: v[:1] for k, v in src.module_.state_dict().items() if v.ndim}
    with pytest.raises(ValueError, match="Shapes differ"):
        load_state_dict(dst, bad, strict=False)
