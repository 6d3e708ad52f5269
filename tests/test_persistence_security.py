"""A saved encoder folder from an untrusted source is data: every attack of
issue 14 (import walks to os.system, unpickling, loader settings, sizes that
allocate, NaN weights, tampered or broken files) ends in a clear
PersistenceError naming the file (and the config key), before anything is
built."""

import copy
import importlib
import io
import json
import os
import pickle
import time
import warnings
import zipfile

import numpy as np
import pytest
import torch

from sklearn_cl3d import FineTunedClassifier, YAwarePretrainer, load_pretrained
from sklearn_cl3d.callbacks import AtomicCheckpoint
from sklearn_cl3d.persistence import (
    CONFIG_NAME,
    MANIFEST_NAME,
    WEIGHTS_NAME,
    PersistenceError,
    _checks as checks_module,
    _pretrained as pretrained_module,
)
from sklearn_cl3d.persistence._manifest import make_manifest

TABULAR = dict(
    backbone="mlp",
    backbone__hidden_dims=(8,),
    hidden_dim=8,
    projection_dim=4,
    batch_size=8,
    max_epochs=1,
    random_state=0,
)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(16, 6)).astype(np.float32), rng.uniform(20, 80, 16)


@pytest.fixture(scope="module")
def fitted(data):
    X, age = data
    return YAwarePretrainer(**TABULAR).fit(X, age)


@pytest.fixture
def folder(fitted, tmp_path):
    return fitted.save_pretrained(tmp_path / "encoder")


def _rewrite(folder, *, config=None, weights=None, raw_config=None):
    """Replace files and recompute the manifest, as an attacker can: the
    checksums then agree and the content checks are what is tested."""
    if config is not None:
        raw_config = json.dumps(config).encode()
    if raw_config is not None:
        (folder / CONFIG_NAME).write_bytes(raw_config)
    if weights is not None:
        (folder / WEIGHTS_NAME).write_bytes(weights)
    files = {name: (folder / name).read_bytes() for name in (WEIGHTS_NAME, CONFIG_NAME)}
    (folder / MANIFEST_NAME).write_text(make_manifest(files))


def _config(folder):
    return json.loads((folder / CONFIG_NAME).read_text())


def _weights_bytes(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _refused(folder, match, **kwargs):
    with pytest.raises(PersistenceError, match=match) as info:
        load_pretrained(folder, **kwargs)
    return str(info.value)


# ------------------------------------------------------ nothing runs code

ATTACKS = [
    "torch:os.system",
    "sklearn:os.system",
    "sklearn_cl3d.nn:os.system",
    "sklearn_cl3d.nn.os:system",
    "os:system",
    "builtins:eval",
    "subprocess:Popen",
    "torch:load",
    "torch.optim:Adam.__init__.__globals__",
    "sklearn_cl3d.nn:MLPEncoder.__init__.__globals__",
    "sklearn_cl3d.nn:MLPEncoder.__class__",
    "sklearn_cl3d.nn:__builtins__",
    "torch.nn:MSELoss.__reduce_ex__",
    "os.system",
    "os system",
    "",
]


@pytest.fixture
def no_imports(monkeypatch):
    """Fail the test if anything is imported by name while loading."""

    def refuse(name, *args, **kwargs):
        raise AssertionError(f"importlib.import_module({name!r}) was called")

    monkeypatch.setattr(importlib, "import_module", refuse)


@pytest.mark.parametrize("name", ATTACKS)
def test_names_outside_the_allow_list_are_refused(folder, tmp_path, name, no_imports):
    marker = tmp_path / "pwned"
    config = _config(folder)
    config["params"]["backbone"] = {"__object__": name}
    config["params"]["backbone__command"] = f"touch {marker}"
    _rewrite(folder, config=config)
    message = _refused(folder, "params.backbone")
    assert str(folder / CONFIG_NAME) in message
    # the class of the saved estimator, and a transformer's class
    config = _config(folder)
    del config["params"]["backbone__command"]
    config["params"]["backbone"] = "mlp"
    for place, entry in (
        ("class", name),
        ("params.preprocessing", {"__estimator__": name, "params": {}}),
        ("params.optimizer", {"__object__": name}),
        ("params.kernel", {"__object__": name}),
    ):
        attack = copy.deepcopy(config)
        if place == "class":
            attack["class"] = entry
        else:
            attack["params"][place.split(".")[1]] = entry
        _rewrite(folder, config=attack)
        _refused(folder, f"key '{place}'")
    # pretrained= on the fine-tuning estimators goes through the same loader
    attack = copy.deepcopy(config)
    attack["params"]["optimizer"] = {"__object__": name}
    _rewrite(folder, config=attack)
    X = np.zeros((4, 6), dtype=np.float32)
    with pytest.raises(PersistenceError, match="params.optimizer"):
        FineTunedClassifier(folder, max_epochs=1).fit(X, [0, 1, 0, 1])
    assert not marker.exists()


def test_the_legacy_import_tag_is_looked_up_too(folder, no_imports):
    config = _config(folder)
    config["format_version"] = 1
    config["params"]["optimizer"] = {"__import__": "torch:os.system"}
    (folder / MANIFEST_NAME).unlink()
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="without a manifest"):
        _refused(folder, "params.optimizer.*'torch:os.system' is not a class")
    # ... and is not accepted in the current format
    config["format_version"] = 2
    config["params"]["optimizer"] = {"__import__": "torch.optim:Adam"}
    _rewrite(folder, config=config)
    _refused(folder, "params.optimizer.*unknown entry")


def test_allowed_names_only_where_they_fit(folder):
    config = _config(folder)
    for key, name, match in (
        ("backbone", "torch.optim:Adam", "is a optimizer, which cannot be used"),
        ("optimizer", "sklearn_cl3d.nn:MLPEncoder", "is a network"),
        ("criterion", "torch.utils.data:DataLoader", "is a loader"),
        ("kernel", "torch.nn:MSELoss", "is a criterion"),
        ("sigma", "sklearn_cl3d.losses:rbf_kernel", "is a kernel"),
        ("backbone", "sklearn_cl3d:YAwarePretrainer", "is a pretrainer"),
    ):
        attack = copy.deepcopy(config)
        attack["params"][key] = {"__object__": name}
        _rewrite(folder, config=attack)
        _refused(folder, f"params.{key}.*{match}")
    attack = copy.deepcopy(config)
    attack["class"] = "sklearn_cl3d.data:CropOrPad"
    _rewrite(folder, config=attack)
    _refused(folder, "class.*is a transformer")
    attack = copy.deepcopy(config)
    attack["params"]["preprocessing"] = {
        "__estimator__": "torch.optim:SGD",
        "params": {},
    }
    _rewrite(folder, config=attack)
    _refused(folder, "params.preprocessing.*is a optimizer")


def test_loader_settings_are_never_restored(folder, data):
    X, _ = data
    config = _config(folder)
    config["params"]["torch_load_kwargs"] = {"__dict__": {"weights_only": False}}
    _rewrite(folder, config=config)
    with pytest.warns(UserWarning, match="'torch_load_kwargs' is ignored"):
        est = load_pretrained(folder)
    assert est.torch_load_kwargs is None
    # the attack chain of the issue: that setting would later make a resumed
    # checkpoint unpickle its files; the checkpoint reads weights_only anyway
    cp = AtomicCheckpoint(dirname=str(folder.parent / "cp"), resume=True)
    est.set_params(callbacks=[("cp", cp)], max_epochs=1)
    est.fit(X, data[1])
    assert cp.resumed_from_ is None


def test_weights_are_read_weights_only(folder, tmp_path, monkeypatch):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_pretrained(folder)
    monkeypatch.undo()
    assert calls == [True]

    class Marker:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    buffer = io.BytesIO()
    torch.save({"x": Marker()}, buffer)
    _rewrite(folder, weights=buffer.getvalue())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's note on the pickle protocol
        _refused(folder, "weights.pt' holds objects other than tensors")
    assert not (tmp_path / "pwned").exists()


# ------------------------------------------------- values are validated


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("lr", -1.0, "'lr' parameter of YAwarePretrainer must be"),
        ("hidden_dim", "8", "'hidden_dim' parameter"),
        ("max_epochs", -3, "'max_epochs' parameter"),
        ("feature_layer", "weights", "'feature_layer' parameter"),
        ("device", 5, "'device' parameter"),
        ("warm_start", "yes", "'warm_start' parameter"),
        ("optimizer", "torch.optim:Adam", "'optimizer' parameter"),
        ("no_such_parameter", 1, "has no parameter 'no_such_parameter'"),
        ("callbacks", None, "callbacks are never stored"),
        ("callbacks__cp__dirname", "/tmp", "callbacks are never stored"),
        ("iterator_valid__num_workers", 10**6, "number of workers"),
        (
            "iterator_valid__collate_fn",
            {"__object__": "sklearn_cl3d.losses:rbf_kernel"},
            "is a kernel, which cannot be used",
        ),
        ("sigma", float("nan"), "not valid JSON"),
        ("sigma", {"weird": 1}, "unknown entry"),
        ("sigma", {"__tuple__": 3}, "must hold a list"),
        ("sigma", {"__ndarray__": [1], "dtype": "O"}, "dtype 'O'"),
        ("sigma", {"__ndarray__": [1], "dtype": "(1000000000,)f8"}, "dtype"),
        ("sigma", {"__ndarray__": [[1], [1, 2]], "dtype": "<f4"}, "not a valid"),
        ("sigma", {"__device__": "warp-drive:9"}, "not a torch device"),
    ],
)
def test_values_are_checked_before_anything_is_built(
    folder, monkeypatch, key, value, match
):
    config = _config(folder)
    config["params"][key] = value
    if key == "sigma" and isinstance(value, float):
        raw = json.dumps(config).encode()  # json writes the NaN literal
        _rewrite(folder, raw_config=raw)
    else:
        _rewrite(folder, config=config)
    built = []
    monkeypatch.setattr(
        pretrained_module, "initialize_for_inference", lambda *a, **k: built.append(1)
    )
    message = _refused(folder, match)
    assert str(folder / CONFIG_NAME) in message
    assert not built


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("module_", 1, "not a fitted attribute"),
        ("__class__", 1, "not a fitted attribute"),
        ("transform", 1, "not a fitted attribute"),
        ("history_", [], "not a fitted attribute"),
        ("input_shape_", {"__tuple__": [0]}, "not a per-sample shape"),
        ("input_shape_", {"__tuple__": [1, 2, 3, 4, 5]}, "not a per-sample shape"),
        ("input_shape_", "big", "not a per-sample shape"),
        ("_base_seed_", -1, "not a seed"),
        ("n_features_in_", {"__object__": "torch.optim:Adam"}, "plain data"),
        ("n_features_in_", {"__import__": "torch:os.system"}, "plain data"),
    ],
)
def test_fitted_attributes_are_plain_checked_data(folder, name, value, match):
    config = _config(folder)
    config["fitted"][name] = value
    _rewrite(folder, config=config)
    _refused(folder, f"fitted.{name}.*{match}")


# --------------------------------------- sizes come from the weights file


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("hidden_dim", 10**9),
        ("projection_dim", 10**9),
        ("backbone__hidden_dims", {"__tuple__": [10**9]}),
        ("backbone__hidden_dims", {"__tuple__": [8] * 100_000}),
    ],
)
def test_a_config_cannot_allocate_more_than_the_weights_hold(
    folder, monkeypatch, key, value
):
    config = _config(folder)
    config["params"][key] = value
    _rewrite(folder, config=config)
    built = []
    monkeypatch.setattr(
        pretrained_module, "initialize_for_inference", lambda *a, **k: built.append(1)
    )
    start = time.perf_counter()
    message = _refused(folder, "does not match|more parts than its weights")
    assert time.perf_counter() - start < 5
    assert not built  # refused before the real network was allocated
    assert "weights" in message


def test_input_shape_that_changes_the_network_is_refused(folder):
    config = _config(folder)
    config["fitted"]["input_shape_"] = {"__tuple__": [10**6]}
    config["fitted"]["n_features_in_"] = 10**6
    _rewrite(folder, config=config)
    _refused(folder, r"backbone.layers.0.weight: \(8, 6\).*\(8, 1000000\)")


def test_weights_that_do_not_fit_the_network(folder, fitted):
    state = {k: v.clone() for k, v in fitted.module_.state_dict().items()}
    for broken, match in (
        ({**state, "extra.weight": torch.zeros(2)}, "unexpected 1"),
        ({k: v for k, v in list(state.items())[:-1]}, "missing 1"),
        (
            {k: (v.double() if v.is_floating_point() else v) for k, v in state.items()},
            "float64 in the file",
        ),
        ([v for v in state.values()], "dict of parameter names to tensors"),
        ({"x": 1}, "dict of parameter names to tensors"),
        ({k: v.to_sparse() for k, v in state.items()}, "not a dense tensor"),
    ):
        _rewrite(folder, weights=_weights_bytes(broken))
        _refused(folder, f"weights.pt'.*{match}")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused(folder, fitted, bad):
    state = {k: v.clone() for k, v in fitted.module_.state_dict().items()}
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key].view(-1)[0] = bad
    _rewrite(folder, weights=_weights_bytes(state))
    message = _refused(folder, "NaN or infinite")
    assert str(folder / WEIGHTS_NAME) in message and key in message


def test_a_network_with_non_finite_weights_is_not_saved(fitted, tmp_path):
    broken = copy.deepcopy(fitted)
    with torch.no_grad():
        next(broken.module_.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(PersistenceError, match="NaN or infinite"):
        broken.save_pretrained(tmp_path / "nan")
    assert not (tmp_path / "nan").exists()


# ------------------------------------------------- damaged or tampered files


def test_tampered_files_fail_their_checksum(folder):
    raw = (folder / CONFIG_NAME).read_bytes()
    (folder / CONFIG_NAME).write_bytes(raw.replace(b'"lr": 0.0001', b'"lr": 0.0002'))
    _refused(folder, "SHA-256 of '.*config.json' differs")
    (folder / CONFIG_NAME).write_bytes(raw)
    weights = (folder / WEIGHTS_NAME).read_bytes()
    (folder / WEIGHTS_NAME).write_bytes(weights[: len(weights) // 2])
    _refused(folder, "weights.pt' has .* bytes but .*manifest.json' records")
    (folder / WEIGHTS_NAME).unlink()
    _refused(folder, "weights.pt' is missing")
    (folder / WEIGHTS_NAME).write_bytes(weights)
    load_pretrained(folder)  # intact again
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    for broken, match in (
        (
            {
                **manifest,
                "files": {**manifest["files"], "../x": manifest["files"][CONFIG_NAME]},
            },
            "not a plain file name",
        ),
        (
            {**manifest, "files": {CONFIG_NAME: manifest["files"][CONFIG_NAME]}},
            "a saved encoder has exactly",
        ),
        ({**manifest, "format_version": 7}, "manifest version 7"),
        (
            {
                **manifest,
                "files": {
                    CONFIG_NAME: {"sha256": "x", "size": 1},
                    WEIGHTS_NAME: manifest["files"][WEIGHTS_NAME],
                },
            },
            "64 hex digits",
        ),
        ([], "not an sklearn_cl3d manifest"),
    ):
        (folder / MANIFEST_NAME).write_text(json.dumps(broken))
        _refused(folder, f"manifest.json'.*{match}")
    (folder / MANIFEST_NAME).write_bytes(b"\xff\xfe")
    _refused(folder, "manifest.json' is not UTF-8")
    (folder / MANIFEST_NAME).unlink()
    _refused(folder, "manifest.json is missing next to .*config.json")


def _deep(n):
    return ("[" * n + "]" * n).encode()


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[]", "not an sklearn_cl3d encoder config"),
        (b"null", "not an sklearn_cl3d encoder config"),
        (_deep(100_000), "nested too deeply|not an sklearn_cl3d"),
        (b'{"a": 1' + b"0" * 5000 + b"}", "not valid JSON"),
    ],
)
def test_broken_config_json(folder, raw, match):
    _rewrite(folder, raw_config=raw)
    message = _refused(folder, match)
    assert str(folder / CONFIG_NAME) in message


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda c: c.pop("params"), "the key 'params' is missing"),
        (lambda c: c.pop("class"), "the key 'class' is missing"),
        (lambda c: c.pop("fitted"), "the key 'fitted' is missing"),
        (lambda c: c.update(params=[1]), "'params' must be a JSON object"),
        (lambda c: c.update(fitted="x"), "'fitted' must be a JSON object"),
        (lambda c: c.update({"class": 3}), "'class' must be a JSON string"),
        (lambda c: c.update(format_version="2"), "'format_version' must be an integer"),
        (
            lambda c: c.update(format_version=True),
            "'format_version' must be an integer",
        ),
        (lambda c: c.update(format_version=99), "format version 99; .*Upgrade"),
        (lambda c: c.update(format_version=0), "invalid format version 0"),
        (lambda c: c.update(format="pickle"), "not an sklearn_cl3d encoder config"),
        (lambda c: c.update(extra=1), "unexpected keys \\['extra'\\]"),
        (lambda c: c.update(versions=[1]), "'versions' must map"),
        (lambda c: c["fitted"].pop("input_shape_"), "fitted.input_shape_.*missing"),
    ],
)
def test_config_with_missing_keys_or_wrong_types(folder, edit, match):
    config = _config(folder)
    edit(config)
    _rewrite(folder, config=config)
    message = _refused(folder, match)
    assert str(folder / CONFIG_NAME) in message


def _stored_zip(data):
    """The same archive with its records deflate-compressed."""
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(data)) as src,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst,
    ):
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    return out.getvalue()


@pytest.mark.parametrize(
    ("cut", "match"),
    [
        (lambda w: b"", "empty, truncated or damaged"),
        (lambda w: w[: len(w) // 2], "empty, truncated or damaged|truncated"),
        (lambda w: w[:-30], "truncated or damaged"),
        (lambda w: b"\x00" * len(w), "empty, truncated or damaged"),
        (lambda w: pickle.dumps({"a": 1}), "empty, truncated or damaged"),
        (_stored_zip, "compressed records"),
    ],
)
def test_truncated_or_damaged_weights(folder, cut, match):
    weights = (folder / WEIGHTS_NAME).read_bytes()
    _rewrite(folder, weights=cut(weights))
    message = _refused(folder, match)
    assert str(folder / WEIGHTS_NAME) in message


def test_oversized_config_is_refused_unread(folder, monkeypatch):
    monkeypatch.setattr(checks_module, "MAX_CONFIG_BYTES", 100)
    _refused(folder, "config.json' is larger than 100 bytes")


def test_legacy_folder_without_manifest_loads_with_a_warning(folder, fitted, data):
    X, _ = data
    config = _config(folder)
    config["format_version"] = 1

    def legacy(value):
        if isinstance(value, dict):
            return {
                ("__import__" if k == "__object__" else k): legacy(v)
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [legacy(v) for v in value]
        return value

    (folder / CONFIG_NAME).write_text(json.dumps(legacy(config)))
    (folder / MANIFEST_NAME).unlink()
    with pytest.warns(UserWarning, match="without a manifest"):
        again = load_pretrained(folder)
    np.testing.assert_array_equal(again.transform(X), fitted.transform(X))


def test_nothing_is_imported_when_loading(folder, fitted, data, no_imports):
    X, _ = data
    np.testing.assert_array_equal(
        load_pretrained(folder).transform(X), fitted.transform(X)
    )


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX named pipes")
def test_special_files_are_refused_without_blocking(folder):
    (folder / WEIGHTS_NAME).unlink()
    os.mkfifo(folder / WEIGHTS_NAME)  # opening it for reading would block
    start = time.perf_counter()
    _refused(folder, "weights.pt' is not a regular file")
    assert time.perf_counter() - start < 5
    (folder / WEIGHTS_NAME).unlink()
    (folder / WEIGHTS_NAME).symlink_to("/dev/zero")
    _refused(folder, "weights.pt' is not a regular file")
    (folder / MANIFEST_NAME).unlink()
    (folder / MANIFEST_NAME).symlink_to("/dev/zero")
    _refused(folder, "manifest.json' is not a regular file")
