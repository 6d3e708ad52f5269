"""Tests for sklearn_cl3d.nn: backbones, projection head, registry."""

import copy
import doctest
import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sklearn_cl3d.nn as cl3d_nn
from sklearn_cl3d.nn import (
    BACKBONES,
    ContrastiveModel,
    DenseNet3D,
    MLPEncoder,
    ProjectionHead,
    SmallCNN3D,
    _densenet,
    _heads,
    _registry,
    _small,
    build_backbone,
    densenet121,
)

BN_TYPES = nn.modules.batchnorm._BatchNorm


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def tiny_densenet(**kwargs):
    params = dict(growth_rate=4, block_config=(1, 1), num_init_features=8, bn_size=2)
    params.update(kwargs)
    return DenseNet3D(**params)


@pytest.fixture(scope="module")
def dn121():
    torch.manual_seed(0)
    return densenet121()


# --------------------------------------------------------------------------
# DenseNet-121


def test_densenet121_parameter_counts(dn121):
    head = ProjectionHead(1024, 512, 128)
    assert n_params(dn121) == 11_240_576
    assert n_params(head) == 590_464
    assert n_params(ContrastiveModel(dn121, head)) == 11_831_040

    classifier = densenet121(final_norm=True)
    assert n_params(classifier) + n_params(nn.Linear(1024, 2)) == 11_244_674


def test_densenet121_structure(dn121):
    assert dn121.out_features == 1024
    assert dn121.block_config == (6, 12, 24, 16)
    names = dict(dn121.features.named_children())
    assert "norm5" not in names
    assert [k for k in names if k.startswith("denseblock")] == [
        f"denseblock{i}" for i in range(1, 5)
    ]
    assert [k for k in names if k.startswith("transition")] == [
        f"transition{i}" for i in range(1, 4)
    ]
    stem = dn121.features.conv0
    assert stem.kernel_size == (7, 7, 7) and stem.stride == (2, 2, 2)
    assert stem.padding == (3, 3, 3) and stem.bias is None
    layer = dn121.features.denseblock1.denselayer1
    assert layer.conv1.out_channels == 128 and layer.conv2.out_channels == 32
    assert "norm5" in dict(densenet121(final_norm=True).features.named_children())

    default = inspect.signature(DenseNet3D).parameters["block_config"].default
    assert tuple(default) == (6, 12, 24, 16)
    assert DenseNet3D().block_config == (6, 12, 24, 16)


def test_densenet121_forward_32(dn121):
    dn121.eval()
    with torch.no_grad():
        out = dn121(torch.randn(1, 1, 32, 32, 32))
    assert out.shape == (1, 1024)
    assert torch.isfinite(out).all()
    assert (out >= 0).all()  # ReLU before global pooling


@pytest.mark.parametrize(
    "spatial, expected",
    [((64, 64, 64), (2, 2, 2)), ((121, 145, 121), (3, 4, 3))],
)
def test_densenet121_feature_map_size(dn121, spatial, expected):
    # Shapes only: run on the meta device, no real computation.
    meta = copy.deepcopy(dn121).to("meta").eval()
    seen = {}

    def hook(module, inputs, output):
        seen["shape"] = tuple(output.shape)

    meta.features.register_forward_hook(hook)
    out = meta(torch.empty(1, 1, *spatial, device="meta"))
    assert seen["shape"] == (1, 1024, *expected)
    assert tuple(out.shape) == (1, 1024)


# --------------------------------------------------------------------------
# Small DenseNet3D, memory-efficient mode


def test_tiny_densenet_forward_backward():
    torch.manual_seed(0)
    net = tiny_densenet()
    assert net.out_features == (8 + 4) // 2 + 4
    x = torch.randn(2, 1, 16, 16, 16, requires_grad=True)
    out = net(x)
    assert out.shape == (2, net.out_features)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in net.parameters())


def test_tiny_densenet_dropout_and_channels():
    net = tiny_densenet(drop_rate=0.5, in_channels=3, final_norm=True)
    out = net(torch.randn(2, 3, 16, 16, 16))
    assert out.shape == (2, net.out_features)
    with pytest.raises(ValueError, match="drop_rate"):
        tiny_densenet(drop_rate=1.0)
    with pytest.raises(ValueError, match="block_config"):
        tiny_densenet(block_config=())
    with pytest.raises(TypeError, match="block_config"):
        tiny_densenet(block_config=2)


def _run(net, x, train):
    net.train(train)
    x = x.clone().requires_grad_(True)
    out = net(x)
    (out * torch.arange(out.numel()).reshape(out.shape)).sum().backward()
    grads = {k: p.grad.clone() for k, p in net.named_parameters()}
    return out.detach(), x.grad.clone(), grads


def _twins(mode, dtype=torch.float32, **kwargs):
    """A plain DenseNet and a copy in ``memory_efficient=mode``, same weights."""
    torch.manual_seed(0)
    kwargs = {"block_config": (2, 2), **kwargs}
    ref = tiny_densenet(memory_efficient=False, **kwargs).to(dtype)
    eff = tiny_densenet(memory_efficient=mode, **kwargs).to(dtype)
    eff.load_state_dict(ref.state_dict())
    return ref, eff


class _Counters:
    """Counts the recomputing autograd function and ``checkpoint`` calls."""

    def __init__(self, monkeypatch):
        self.fused, self.checkpoint = 0, []
        real_apply = _densenet._DenseLayerFunction.apply
        real_checkpoint = _densenet.checkpoint

        def apply(*args):
            self.fused += 1
            return real_apply(*args)

        def counting_checkpoint(*args, **kwargs):
            self.checkpoint.append(kwargs.get("use_reentrant"))
            return real_checkpoint(*args, **kwargs)

        monkeypatch.setattr(_densenet._DenseLayerFunction, "apply", apply)
        monkeypatch.setattr(_densenet, "checkpoint", counting_checkpoint)


def _assert_same_run(ref, eff, x, train, exact=False):
    out_r, gx_r, g_r = _run(ref, x, train)
    out_e, gx_e, g_e = _run(eff, x, train)
    tol = {"rtol": 0.0, "atol": 0.0} if exact else {}
    torch.testing.assert_close(out_e, out_r, **tol)
    torch.testing.assert_close(gx_e, gx_r, **tol)
    for k in g_r:
        torch.testing.assert_close(g_e[k], g_r[k], msg=k, **tol)
    # BN running statistics (and batch counts) are updated exactly once
    sd_r, sd_e = ref.state_dict(), eff.state_dict()
    for k in sd_r:
        torch.testing.assert_close(sd_e[k], sd_r[k], msg=k, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["auto", True])
def test_memory_efficient_recomputes_without_second_convolution(
    mode, dtype, monkeypatch
):
    ref, eff = _twins(mode, dtype)
    counters = _Counters(monkeypatch)
    x = torch.randn(3, 1, 16, 16, 16, dtype=dtype)
    # the recomputation replays the forward's own arithmetic: bit-identical
    _assert_same_run(ref, eff, x, train=True, exact=True)
    assert counters.fused == 4  # one per dense layer
    assert counters.checkpoint == []


def _saved_bytes(net, x):
    """Bytes of the distinct tensors autograd keeps for a backward of ``net``."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(x)
    out.sum().backward()
    return sum(seen.values())


def test_memory_efficient_auto_stores_less():
    ref, eff = _twins("auto", block_config=(3, 3))
    x = torch.randn(2, 1, 16, 16, 16)
    plain, recomputed = _saved_bytes(ref, x), _saved_bytes(eff, x)
    assert recomputed < 0.8 * plain


@pytest.mark.parametrize("train", [False, True])
def test_memory_efficient_true_checkpoints_where_recompute_cannot(train, monkeypatch):
    # under autocast the recomputing function does not apply: True falls back
    # to checkpointing the bottleneck, "auto" stores everything
    counters = _Counters(monkeypatch)
    x = torch.randn(2, 1, 16, 16, 16)
    for mode, expected in [(True, [False] * 4), ("auto", [])]:
        ref, eff = _twins(mode)
        counters.checkpoint.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_r, gx_r, g_r = _run(ref, x, train)
            out_e, gx_e, g_e = _run(eff, x, train)
        assert counters.checkpoint == expected
        torch.testing.assert_close(out_e, out_r)
        torch.testing.assert_close(gx_e, gx_r)
        for k in g_r:
            torch.testing.assert_close(g_e[k], g_r[k], msg=k)
    assert counters.fused == 0


@pytest.mark.parametrize("mode", ["auto", True])
def test_memory_efficient_eval_mode_stores_plainly(mode, monkeypatch):
    # eval-mode BN normalises with running statistics: nothing to recompute
    counters = _Counters(monkeypatch)
    ref, eff = _twins(mode)
    _assert_same_run(ref, eff, torch.randn(2, 1, 16, 16, 16), train=False)
    assert counters.fused == 0
    assert counters.checkpoint == ([False] * 4 if mode is True else [])


def test_memory_efficient_cumulative_momentum_dropout_and_frozen_input():
    ref, eff = _twins("auto", drop_rate=0.3)
    for net in (ref, eff):
        for m in net.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.momentum = None  # cumulative moving average
        # a frozen stem: the first dense layer's input needs no gradient
        net.features.conv0.requires_grad_(False)
        net.features.norm0.requires_grad_(False)
    x = torch.randn(2, 1, 16, 16, 16)
    for step in range(2):
        torch.manual_seed(step)
        out_r = ref(x)
        out_r.square().sum().backward()
        torch.manual_seed(step)
        out_e = eff(x)
        out_e.square().sum().backward()
        torch.testing.assert_close(out_e, out_r)
    for (k, p_r), p_e in zip(ref.named_parameters(), eff.parameters()):
        if p_r.requires_grad:
            torch.testing.assert_close(p_e.grad, p_r.grad, msg=k)
        else:
            assert p_e.grad is None, k
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(eff.state_dict()[k], v, msg=k)


def test_memory_efficient_without_any_gradient(monkeypatch):
    counters = _Counters(monkeypatch)
    net = tiny_densenet(memory_efficient=True).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 16, 16, 16)).shape == (1, net.out_features)
    frozen = tiny_densenet(memory_efficient="auto").requires_grad_(False)
    frozen(torch.randn(2, 1, 16, 16, 16))
    assert counters.fused == 0 and counters.checkpoint == []


@pytest.mark.parametrize("bad", ["yes", 1, None, "Auto"])
def test_memory_efficient_rejects_other_values(bad):
    with pytest.raises(ValueError, match="memory_efficient"):
        tiny_densenet(memory_efficient=bad)


# --------------------------------------------------------------------------
# Small backbones


@pytest.mark.parametrize(
    "shape, kwargs",
    [((2, 1, 8, 8, 8), {}), ((2, 2, 16, 16, 16), {"in_channels": 2})],
)
def test_small_cnn3d_shapes(shape, kwargs):
    net = SmallCNN3D(**kwargs)
    assert net.out_features == 32
    out = net(torch.randn(*shape))
    assert out.shape == (shape[0], 32)
    out.sum().backward()


def test_small_cnn3d_odd_size_and_channels():
    net = SmallCNN3D(channels=(4, 6, 8, 10), dropout=0.2)
    assert net.out_features == 10
    assert net(torch.randn(2, 1, 9, 7, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match="channels"):
        SmallCNN3D(channels=())


def test_mlp_encoder_shapes():
    net = MLPEncoder(in_features=12)
    assert net.out_features == 64
    assert net(torch.randn(5, 12)).shape == (5, 64)
    assert net(torch.randn(5, 1, 12)).shape == (5, 64)
    assert net(torch.randn(5, 3, 4)).shape == (5, 64)
    assert not any(isinstance(m, BN_TYPES) for m in net.modules())

    net = MLPEncoder(12, hidden_dims=(7, 3), dropout=0.1).train()
    out = net(torch.randn(1, 12))  # batch of one in training mode
    assert out.shape == (1, 3)
    out.sum().backward()
    assert MLPEncoder(4, hidden_dims=5).out_features == 5
    with pytest.raises(ValueError, match="in_features=12"):
        net(torch.randn(2, 13))


# --------------------------------------------------------------------------
# Head and ContrastiveModel


def test_projection_head():
    torch.manual_seed(0)
    head = ProjectionHead(16, hidden_dim=8, out_dim=4)
    assert head.out_features == 4
    h = torch.randn(6, 16)
    z = head(h)
    assert z.shape == (6, 4)
    hidden, z2 = head(h, return_hidden=True)
    assert hidden.shape == (6, 8)
    torch.testing.assert_close(z2, z)
    # hidden is the first Linear's output BEFORE the ReLU
    torch.testing.assert_close(hidden, head.hidden_representation(h))
    assert (hidden < 0).any()
    torch.testing.assert_close(z, head.head_projection(torch.relu(hidden)))
    assert not any(isinstance(m, BN_TYPES) for m in head.modules())
    assert [type(m) for m in head.children()] == [nn.Linear, nn.ReLU, nn.Linear]


def test_contrastive_model_encode():
    torch.manual_seed(0)
    model = ContrastiveModel(
        SmallCNN3D(channels=(4, 8)), ProjectionHead(8, hidden_dim=6, out_dim=5)
    ).eval()
    x = torch.randn(3, 1, 8, 8, 8)
    expected = {"backbone": 8, "hidden": 6, "projection": 5}
    for layer, dim in expected.items():
        assert model.feature_dim(layer) == dim
        assert model.encode(x, layer=layer).shape == (3, dim)
    assert model.feature_dim() == 8
    torch.testing.assert_close(model(x), model.encode(x, layer="projection"))
    torch.testing.assert_close(model.encode(x), model.backbone(x))
    torch.testing.assert_close(
        model.encode(x, layer="hidden"),
        model.head.hidden_representation(model.backbone(x)),
    )
    with pytest.raises(ValueError, match="layer"):
        model.encode(x, layer="pooled")
    with pytest.raises(ValueError, match="layer"):
        model.feature_dim("pooled")
    with pytest.raises(ValueError, match="in_features"):
        ContrastiveModel(SmallCNN3D(channels=(4, 8)), ProjectionHead(9))


# --------------------------------------------------------------------------
# Registry


class _CustomConv(nn.Module):
    def __init__(self, in_channels, width=3):
        super().__init__()
        self.in_channels = in_channels
        self.conv = nn.Conv3d(in_channels, width, 1)
        self.out_features = width

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3, 4))


def test_registry_contents():
    assert BACKBONES["densenet121"] is densenet121
    assert BACKBONES["densenet"] is DenseNet3D
    assert BACKBONES["small3d"] is SmallCNN3D
    assert BACKBONES["mlp"] is MLPEncoder


def test_build_backbone_by_name():
    net = build_backbone("small3d", (3, 8, 8, 8), channels=(4, 8))
    assert isinstance(net, SmallCNN3D) and net.in_channels == 3
    assert net(torch.randn(2, 3, 8, 8, 8)).shape == (2, 8)
    net = build_backbone("small3d", (3, 8, 8, 8), in_channels=3, channels=(4,))
    assert net.in_channels == 3
    net = build_backbone(
        "densenet", (2, 16, 16, 16), growth_rate=4, block_config=(1,), bn_size=1
    )
    assert isinstance(net, DenseNet3D) and net.in_channels == 2
    assert build_backbone("densenet121", [2, 32, 32, 32]).in_channels == 2

    net = build_backbone("mlp", (7,), hidden_dims=(5,))
    assert net.in_features == 7 and net.out_features == 5
    # A volume shape is flattened for the MLP
    net = build_backbone("mlp", (1, 4, 4, 4))
    assert net.in_features == 64
    assert net(torch.randn(2, 1, 4, 4, 4)).shape == (2, 64)


def test_build_backbone_class_callable_instance():
    net = build_backbone(_CustomConv, (2, 8, 8, 8), width=5)
    assert net.in_channels == 2 and net.out_features == 5
    net = build_backbone(lambda **kw: MLPEncoder(6, **kw), (6,), hidden_dims=(2,))
    assert net.out_features == 2

    inst = SmallCNN3D(channels=(4,))
    assert build_backbone(inst, (1, 8, 8, 8)) is inst
    with pytest.raises(ValueError, match="instance"):
        build_backbone(inst, (1, 8, 8, 8), channels=(8,))


def test_build_backbone_errors():
    with pytest.raises(ValueError, match="backbone") as exc:
        build_backbone("resnet50", (1, 8, 8, 8))
    for name in BACKBONES:
        assert repr(name) in str(exc.value)
    for name in ("densenet121", "densenet", "small3d"):
        with pytest.raises(ValueError, match=r"\(n, C, D, H, W\).*'mlp'"):
            build_backbone(name, (20,))
    with pytest.raises(ValueError, match="volumes"):
        build_backbone(SmallCNN3D, (20,))
    with pytest.raises(TypeError, match="out_features"):
        build_backbone(nn.Identity(), (4,))
    with pytest.raises(TypeError, match="out_features"):
        build_backbone(lambda: nn.ReLU(), (2,))
    with pytest.raises(TypeError, match="Module"):
        build_backbone(lambda: "not a module", (2,))
    with pytest.raises(TypeError, match="backbone"):
        build_backbone(3, (2,))
    with pytest.raises(ValueError, match="input_shape"):
        build_backbone("mlp", ())


# --------------------------------------------------------------------------
# Initialisation and docs


@pytest.mark.parametrize(
    "make",
    [
        lambda: tiny_densenet(final_norm=True),
        lambda: SmallCNN3D(),
        lambda: MLPEncoder(5),
        lambda: ProjectionHead(6, 4, 2),
    ],
)
def test_initialisation(make):
    torch.manual_seed(0)
    net = make()
    n_checked = 0
    for m in net.modules():
        if isinstance(m, BN_TYPES):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))
            n_checked += 1
        elif isinstance(m, nn.Linear):
            assert torch.equal(m.bias, torch.zeros_like(m.bias))
            n_checked += 1
        elif isinstance(m, nn.Conv3d):
            assert m.weight.std() > 0
    assert n_checked > 0


def test_public_api_and_doctests():
    for name in cl3d_nn.__all__:
        obj = getattr(cl3d_nn, name)
        if callable(obj):
            assert obj.__doc__ and "Parameters" in obj.__doc__, name
    for module in (cl3d_nn, _densenet, _small, _heads, _registry):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, module.__name__


def test_resize_in_plane_is_the_interpolation_every_slice_path_uses():
    from sklearn_cl3d.nn.functional import resize_in_plane

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 40, 30, generator=gen)
    # shrinking: anti-aliased bilinear
    got = resize_in_plane(x, (20, 16))
    ref = F.interpolate(x, size=(20, 16), mode="bilinear", align_corners=False,
                        antialias=True)
    assert torch.equal(got, ref)
    assert not torch.equal(got, F.interpolate(x, size=(20, 16), mode="bilinear",
                                              align_corners=False))
    # enlarging: plain bilinear; same size: the input itself
    up = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
    assert torch.equal(resize_in_plane(x, (64, 64)), up)
    assert resize_in_plane(x, (40, 30)) is x
    # 5-D: trilinear, depth kept
    v = torch.randn(2, 1, 5, 16, 12, generator=gen)
    ref = F.interpolate(v, size=(5, 8, 8), mode="trilinear", align_corners=False)
    assert torch.equal(resize_in_plane(v, (8, 8)), ref)
