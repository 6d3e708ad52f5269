"""Tests of the U-Net and heads of global-local contrastive pretraining."""

import math

import pytest
import torch
from torch import nn

from sklearn_cl3d.nn import BACKBONES, GlobalHead, LocalHead, UNet


def _n_params(module):
    return sum(p.numel() for p in module.parameters())


def _conv_bn(c_in, c_out, k):
    """Parameters of conv (with bias) + BatchNorm (weight and bias)."""
    return c_in * c_out * k * k + c_out + 2 * c_out


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet(n_classes=4)


# --------------------------------------------------------------------------
# shapes


@pytest.mark.parametrize("size", [64, 192])
def test_unet_2d_shapes(unet, size):
    x = torch.randn(2, 1, size, size)
    s = size // 32
    assert unet.encode(x).shape == (2, 128, s, s)
    assert unet(x).shape == (2, 4, size, size)
    assert unet.encoded_shape((size, size)) == (128, s, s)


def test_unet_192_reference_shapes(unet):
    x = torch.randn(2, 1, 192, 192)
    assert unet.encode(x).shape == (2, 128, 6, 6)  # 4608 values
    assert math.prod(unet.encode(x).shape[1:]) == 4608
    assert unet.decode(x, 3).shape == (2, 64, 48, 48)


def test_unet_decode_levels(unet):
    x = torch.randn(2, 1, 64, 64)
    expected = [(128, 4), (128, 8), (64, 16), (32, 32), (16, 64)]
    assert unet.decoder_channels == (128, 128, 64, 32, 16)
    for n_blocks, (c, s) in enumerate(expected, start=1):
        assert unet.decode(x, n_blocks).shape == (2, c, s, s)
    assert unet.decode(x).shape == (2, 16, 64, 64)
    for bad in (0, 6):
        with pytest.raises(ValueError, match="n_blocks"):
            unet.decode(x, bad)


def test_unet_3d_shapes():
    torch.manual_seed(0)
    net = UNet(dims=3, n_classes=2)
    x = torch.randn(2, 1, 32, 32, 32)
    assert net.encode(x).shape == (2, 128, 1, 1, 1)
    assert net.decode(x, 3).shape == (2, 64, 8, 8, 8)
    assert net(x).shape == (2, 2, 32, 32, 32)
    assert all(
        isinstance(m, nn.Conv3d)
        for m in net.modules()
        if isinstance(m, (nn.Conv2d, nn.Conv3d))
    )
    assert net.encoded_shape((32, 32, 64)) == (128, 1, 1, 2)


def test_unet_small_channels_and_in_channels():
    net = UNet(in_channels=3, channels=(4, 8, 8), n_classes=2)
    assert net.size_multiple == 4 and net.n_levels == 3
    assert net.decoder_channels == (8, 4)
    assert net(torch.randn(2, 3, 8, 12)).shape == (2, 2, 8, 12)


# --------------------------------------------------------------------------
# layout and parameter counts


def test_encoder_param_count_by_hand(unet):
    # level: two 3x3 conv (weights + bias) + BN (gamma, beta) each
    level1 = (1 * 16 * 9 + 16 + 32) + (16 * 16 * 9 + 16 + 32)  # 2544
    level2 = (16 * 32 * 9 + 32 + 64) + (32 * 32 * 9 + 32 + 64)  # 14016
    level3 = (32 * 64 * 9 + 64 + 128) + (64 * 64 * 9 + 64 + 128)  # 55680
    level4 = (64 * 128 * 9 + 128 + 256) + (128 * 128 * 9 + 128 + 256)  # 221952
    level5 = 2 * (128 * 128 * 9 + 128 + 256)  # 295680
    level6 = level5
    assert (level1, level2, level3, level4, level5) == (
        2544,
        14016,
        55680,
        221952,
        295680,
    )
    per_level = [_n_params(level) for level in unet.encoder]
    assert per_level == [level1, level2, level3, level4, level5, level6]
    assert _n_params(unet.encoder) == 885_552


def test_decoder_and_head_param_counts(unet):
    def block(c_in, c_out, n_convs):
        n = _conv_bn(c_in, c_out, 2) + _conv_bn(2 * c_out, c_out, 3)
        return n + (n_convs - 1) * _conv_bn(c_out, c_out, 3)

    expected = [
        block(128, 128, 2),
        block(128, 128, 2),
        block(128, 64, 2),
        block(64, 32, 2),
        block(32, 16, 1),
    ]
    assert [_n_params(b) for b in unet.decoder_blocks] == expected
    assert sum(expected) == 1_204_928
    seg = 2 * _conv_bn(16, 16, 3) + 16 * 4 * 9
    assert _n_params(unet.seg_head) == seg
    assert _n_params(unet) == 885_552 + 1_204_928 + seg


def test_parameter_split_is_a_partition(unet):
    groups = [unet.encoder, unet.decoder_blocks, unet.seg_head]
    ids = [id(p) for g in groups for p in g.parameters()]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in unet.parameters()}
    assert UNet().seg_head is None


def test_decoder_block_layout(unet):
    block = unet.decoder_blocks[4]
    up = [m for m in block.up_conv if isinstance(m, nn.Conv2d)]
    assert len(up) == 1 and up[0].kernel_size == (2, 2) and up[0].padding == (0, 0)
    convs = [m for m in block.convs.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1  # the last block has a single 3x3 conv
    convs = [
        m for m in unet.decoder_blocks[0].convs.modules() if isinstance(m, nn.Conv2d)
    ]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(256, 128), (128, 128)]
    last = unet.seg_head[-1]
    assert isinstance(last, nn.Conv2d) and last.bias is None
    assert last.out_channels == 4


def test_batchnorm_settings(unet):
    bns = [m for m in unet.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(bn.eps == 1e-3 and bn.momentum == 0.01 for bn in bns)


def test_he_init_zero_bias_and_distinct_layers():
    torch.manual_seed(0)
    net = UNet()
    conv = net.encoder[5][1][0]  # 128 -> 128, 3x3: fan_in 1152
    std = float(conv.weight.detach().std())
    assert abs(std - math.sqrt(2 / 1152)) < 0.05 * math.sqrt(2 / 1152)
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            assert torch.count_nonzero(m.bias) == 0
    # same-shaped kernels are drawn independently (no shared op seed)
    assert not torch.equal(net.encoder[4][1][0].weight, net.encoder[5][1][0].weight)
    assert not torch.equal(net.encoder[4][0][0].weight, net.encoder[5][0][0].weight)


def test_same_padding_of_2x2_conv_keeps_size_and_pads_after():
    net = UNet(channels=(2, 2))
    pad, conv = net.decoder_blocks[0].up_conv[:2]
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[0, 0, 1, 1] = 1.0  # output(i, j) = x(i + 1, j + 1)
    x = torch.arange(1.0, 26.0).view(1, 1, 5, 5).repeat(1, 2, 1, 1)
    y = conv(pad(x))[0, 0]
    assert y.shape == (5, 5)
    expected = torch.zeros(5, 5)
    expected[:4, :4] = x[0, 0, 1:, 1:]  # TF 'SAME': 0 before, 1 after
    assert torch.equal(y, expected)


def test_same_padding_3d():
    net = UNet(dims=3, channels=(2, 2))
    pad, conv = net.decoder_blocks[0].up_conv[:2]
    assert conv(pad(torch.randn(1, 2, 3, 4, 5))).shape == (1, 2, 3, 4, 5)


# --------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("size", [(48, 50), (40, 64), (16, 16)])
def test_size_not_divisible_raises(unet, size):
    x = torch.randn(2, 1, *size)
    msg = rf"divisible by 32.*\({size[0]}, {size[1]}\)"
    for call in (unet, unet.encode, lambda t: unet.decode(t, 2)):
        with pytest.raises(ValueError, match=msg):
            call(x)
    with pytest.raises(ValueError, match="divisible by 32"):
        unet.encoded_shape(size)


def test_size_not_divisible_raises_3d():
    net = UNet(dims=3, channels=(2, 2, 2))
    with pytest.raises(ValueError, match=r"divisible by 4.*\(8, 8, 6\)"):
        net.encode(torch.randn(2, 1, 8, 8, 6))


def test_input_checks(unet):
    with pytest.raises(ValueError, match=r"\(n, C, H, W\)"):
        unet(torch.randn(2, 1, 1, 64, 64))
    with pytest.raises(ValueError, match="1 input channel"):
        unet(torch.randn(2, 3, 64, 64))
    with pytest.raises(RuntimeError, match="n_classes=None"):
        UNet()(torch.randn(2, 1, 64, 64))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dims": 1},
        {"dims": True},
        {"channels": (16,)},
        {"channels": (16, 0)},
        {"in_channels": 0},
        {"n_classes": 0},
    ],
)
def test_bad_parameters(kwargs):
    with pytest.raises((ValueError, TypeError)):
        UNet(**kwargs)


def test_not_registered():
    assert not any(v is UNet for v in BACKBONES.values())


# --------------------------------------------------------------------------
# heads


def test_global_head(unet):
    x = torch.randn(2, 1, 192, 192)
    head = GlobalHead(4608)
    z = head(unet.encode(x))
    assert z.shape == (2, 128) and head.out_features == 128
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (4608, 1024),
        (1024, 128),
    ]
    assert all(m.bias is None for m in linears)
    assert _n_params(head) == 4608 * 1024 + 1024 * 128
    assert not any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in head.modules()
    )
    # ReLU between the layers: negative hidden units are cut
    h = torch.randn(3, 4608)
    hidden = torch.relu(h @ linears[0].weight.T)
    assert torch.allclose(head(h), hidden @ linears[1].weight.T, atol=1e-4)
    with pytest.raises(ValueError, match="4608 features"):
        head(torch.randn(2, 128, 5, 5))


@pytest.mark.parametrize("dims", [2, 3])
def test_local_head(dims):
    head = LocalHead(8, dims=dims)
    f = torch.randn(2, 8, *([6] * dims))
    assert head(f).shape == f.shape
    conv_type = nn.Conv2d if dims == 2 else nn.Conv3d
    convs = [m for m in head.modules() if isinstance(m, conv_type)]
    assert len(convs) == 2
    assert all(c.bias is None and c.kernel_size == (1,) * dims for c in convs)
    bns = [m for m in head.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(bns) == 1 and bns[0].eps == 1e-3
    assert _n_params(head) == 2 * 8 * 8 + 2 * 8
    with pytest.raises(ValueError):
        head(torch.randn(2, 4, *([6] * dims)))


def test_local_head_on_decoder_map(unet):
    f = unet.decode(torch.randn(2, 1, 64, 64), 3)
    assert LocalHead(64)(f).shape == (2, 64, 16, 16)


def test_backward_through_encoder_and_heads():
    torch.manual_seed(0)
    net = UNet(channels=(4, 8, 8))
    x = torch.randn(2, 1, 16, 16)
    g1 = GlobalHead(math.prod(net.encoded_shape((16, 16))), 16, 8)
    g2 = LocalHead(8)
    loss = g1(net.encode(x)).square().sum() + g2(net.decode(x, 1)).square().sum()
    loss.backward()
    assert net.encoder[0][0][0].weight.grad is not None
    assert net.decoder_blocks[0].up_conv[1].weight.grad is not None
    assert net.decoder_blocks[1].up_conv[1].weight.grad is None
