"""Tests for the 2-D (slice) backbones used by WSP: TinyNet2D and ResNet2D."""

import pytest
import torch
from torch import nn

from sklearn_cl3d.nn import (
    BACKBONES,
    ResNet2D,
    TinyNet2D,
    build_backbone,
    resnet18_2d,
)


def _n_params(module):
    return sum(p.numel() for p in module.parameters())


def _conv_params(c_in, c_out, k):
    return c_in * c_out * k * k + c_out


# --------------------------------------------------------------------------
# TinyNet2D


def test_tinynet_shape_and_out_features():
    torch.manual_seed(0)
    net = TinyNet2D(in_channels=1, rep_dim=16)
    assert net.out_features == 16
    assert net(torch.randn(2, 1, 156, 156)).shape == (2, 16)
    assert net(torch.randn(2, 1, 160, 157)).shape == (2, 16)
    net3 = TinyNet2D(in_channels=3, rep_dim=8)
    assert net3(torch.randn(2, 3, 156, 156)).shape == (2, 8)
    assert TinyNet2D().out_features == 512


def test_tinynet_layout():
    net = TinyNet2D(in_channels=1, rep_dim=512)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (1, 16),
        (16, 32),
        (32, 64),
        (64, 128),
        (128, 512),
    ]
    assert all(c.kernel_size == (5, 5) and c.padding == (0, 0) for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.modules()) == 5
    assert not any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()
    )


def test_tinynet_param_count():
    expected = (
        _conv_params(1, 16, 5)
        + _conv_params(16, 32, 5)
        + _conv_params(32, 64, 5)
        + _conv_params(64, 128, 5)
        + _conv_params(128, 512, 5)
    )
    assert expected == 1_908_352
    net = TinyNet2D(in_channels=1, rep_dim=512)
    assert _n_params(net) == expected
    # With the WSP head Linear(512->256) + ReLU + Linear(256->128): 2.07 M.
    head = nn.Sequential(nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 128))
    total = _n_params(net) + _n_params(head)
    assert total == 2_072_576
    assert round(total / 1e6, 2) == 2.07


def test_tinynet_min_input_size():
    assert TinyNet2D.min_input_size == 156
    assert TinyNet2D.compute_min_input_size() == 156
    # Empirically: the raw layers fail at 155 and work at 156.
    net = TinyNet2D(in_channels=1, rep_dim=4)
    assert net.features(torch.zeros(1, 1, 156, 156)).shape[-2:] == (1, 1)
    with pytest.raises(RuntimeError):
        net.features(torch.zeros(1, 1, 155, 155))
    # 128x128 fails with a clear ValueError rather than a torch error.
    for size in [(128, 128), (155, 155), (156, 155), (155, 200)]:
        with pytest.raises(ValueError, match=r"156x156.*\(H, W\)") as exc:
            net(torch.zeros(1, 1, *size))
        assert str(size) in str(exc.value)
    with pytest.raises(ValueError, match=r"\(n, C, H, W\)"):
        net(torch.zeros(1, 156, 156))


def test_tinynet_gradient_and_eval_determinism():
    torch.manual_seed(0)
    net = TinyNet2D(in_channels=1, rep_dim=8)
    x = torch.randn(2, 1, 156, 156, requires_grad=True)
    net(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in net.parameters())
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), net(x))


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_tinynet_invalid_params(bad):
    with pytest.raises((TypeError, ValueError)):
        TinyNet2D(in_channels=bad)
    with pytest.raises((TypeError, ValueError)):
        TinyNet2D(rep_dim=bad)


# --------------------------------------------------------------------------
# ResNet2D


def test_resnet18_param_counts():
    assert _n_params(resnet18_2d()) == 11_170_240
    assert _n_params(resnet18_2d(in_channels=3)) == 11_176_512
    # The 1- and 3-channel stems differ by the 7x7 stem weights only.
    assert 11_176_512 - 11_170_240 == 2 * 64 * 7 * 7


def test_resnet18_layout():
    net = resnet18_2d(rep_dim=256, dropout=0.1)
    assert isinstance(net, ResNet2D)
    assert net.out_features == 256
    assert net.conv1.kernel_size == (7, 7) and net.conv1.stride == (2, 2)
    assert net.conv1.in_channels == 1
    for i, width in enumerate((64, 128, 256, 256), start=1):
        stage = getattr(net, f"layer{i}")
        assert len(stage) == 2
        assert stage[0].conv1.out_channels == width
        assert stage[0].conv1.stride == ((1, 1) if i == 1 else (2, 2))
        assert (stage[0].downsample is None) == (i == 1)
        assert stage[1].downsample is None
    drops = [m for m in net.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 4 and all(d.p == 0.1 for d in drops)
    # Names match the usual ResNet checkpoint layout.
    keys = net.state_dict().keys()
    assert {"conv1.weight", "bn1.running_mean", "layer2.0.downsample.0.weight"} <= set(
        keys
    )


def test_resnet_shapes_and_gradient():
    torch.manual_seed(0)
    net = ResNet2D(in_channels=1, blocks=(1, 1, 1, 1), widths=(8, 8, 16, 16))
    x = torch.randn(2, 1, 32, 32, requires_grad=True)
    out = net(x)
    assert out.shape == (2, net.out_features) == (2, 16)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in net.parameters())
    full = resnet18_2d(in_channels=3, rep_dim=32).eval()
    with torch.no_grad():
        assert full(torch.randn(2, 3, 48, 40)).shape == (2, 32)
    with pytest.raises(ValueError, match=r"\(n, C, H, W\)"):
        net(torch.zeros(2, 1, 8, 32, 32))


def test_resnet_dropout_train_only():
    torch.manual_seed(0)
    net = ResNet2D(blocks=(1, 1), widths=(8, 16), dropout=0.5)
    x = torch.randn(2, 1, 32, 32)
    net.eval()
    with torch.no_grad():
        a, b = net(x), net(x)
    assert torch.equal(a, b)
    net.train()
    torch.manual_seed(1)
    with torch.no_grad():
        c = net(x)
    torch.manual_seed(2)
    with torch.no_grad():
        d = net(x)
    assert not torch.allclose(c, d)
    # Without dropout, training-mode outputs are deterministic.
    net0 = ResNet2D(blocks=(1, 1), widths=(8, 16), dropout=0.0).train()
    with torch.no_grad():
        assert torch.equal(net0(x), net0(x))


def test_resnet_invalid_params():
    with pytest.raises(ValueError, match="same length"):
        ResNet2D(blocks=(1, 1), widths=(8,))
    with pytest.raises(ValueError, match="dropout"):
        ResNet2D(dropout=1.0)
    with pytest.raises(TypeError, match="rep_dim"):
        resnet18_2d(rep_dim=1.5)
    with pytest.raises((TypeError, ValueError)):
        resnet18_2d(in_channels=0)


# --------------------------------------------------------------------------
# Registry


def test_registry_names():
    assert BACKBONES["tinynet"] is TinyNet2D
    assert BACKBONES["resnet18"] is resnet18_2d


def test_build_backbone_2d():
    net = build_backbone("tinynet", (3, 156, 160), rep_dim=8)
    assert isinstance(net, TinyNet2D)
    assert net.in_channels == 3 and net.out_features == 8
    net = build_backbone("resnet18", (2, 32, 32), rep_dim=16)
    assert isinstance(net, ResNet2D)
    assert net.in_channels == 2 and net.out_features == 16
    net = build_backbone(ResNet2D, (1, 32, 32), blocks=(1,), widths=(4,))
    assert net.out_features == 4


@pytest.mark.parametrize("name", ["tinynet", "resnet18"])
@pytest.mark.parametrize("shape", [(1, 160, 160, 160), (1, 160), (160,)])
def test_build_backbone_2d_rejects_wrong_rank(name, shape):
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        build_backbone(name, shape)


def test_build_backbone_2d_rejects_wrong_rank_for_class():
    with pytest.raises(ValueError, match="2-D slices"):
        build_backbone(ResNet2D, (1, 8, 32, 32))
    with pytest.raises(ValueError, match="2-D slices"):
        build_backbone(TinyNet2D, (1, 8, 160, 160))


def test_build_backbone_min_size():
    for shape in [(1, 128, 128), (1, 155, 156), (1, 200, 155)]:
        with pytest.raises(ValueError, match=r"156x156.*'tinynet'") as exc:
            build_backbone("tinynet", shape)
        assert str(shape[1:]) in str(exc.value)
    with pytest.raises(ValueError, match=r"\(H, W\)=\(128, 128\).*156x156"):
        build_backbone(TinyNet2D, (1, 128, 128))
    inst = TinyNet2D(rep_dim=4)
    with pytest.raises(ValueError, match="156x156"):
        build_backbone(inst, (1, 128, 128))
    assert build_backbone(inst, (1, 156, 156)) is inst
    # ResNet has no minimum size.
    assert build_backbone("resnet18", (1, 8, 8), rep_dim=8).out_features == 8
