"""CPU work-arounds: float32 weight gradients of tiny reduced-precision
convolutions, the channels-last max pooling and the 1x1x1 convolutions as
matrix products."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sklearn_cl3d.nn import DenseNet3D, _cpu_kernels, densenet121
from sklearn_cl3d.nn._cpu_kernels import (
    MaxPool3d,
    PointwiseConv3d,
    _Float32WeightGrad,
    low_precision_safe_convs,
    max_pool3d,
    safe_conv,
)


def _naive_weight_grad(grad_out, x, kernel, padding):
    """dW[o, i, k] = sum_n sum_q grad_out[n, o, q] x_pad[n, i, q + k], in float64."""
    grad_out, x = grad_out.double(), x.double()
    pad = [p for pair in reversed(padding) for p in (pair, pair)]
    x_pad = F.pad(x, pad)
    out = grad_out.shape[2:]
    grad = torch.zeros(grad_out.shape[1], x.shape[1], *kernel, dtype=torch.float64)
    for k in itertools.product(*(range(n) for n in kernel)):
        window = x_pad[(slice(None), slice(None)) + tuple(
            slice(k[a], k[a] + out[a]) for a in range(len(kernel))
        )]
        grad[(slice(None), slice(None)) + k] = torch.einsum(
            "no...,ni...->oi", grad_out, window
        )
    return grad


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("spatial", [(2, 2, 2), (1, 2, 2), (4, 4, 4)])
def test_float32_weight_grad_function(dtype, spatial):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 16, *spatial, generator=gen).requires_grad_()
    w = (torch.randn(4, 16, 3, 3, 3, generator=gen) * 0.1).requires_grad_()
    b = torch.randn(4, generator=gen).requires_grad_()
    out = _Float32WeightGrad.apply(x, w, b, (1, 1, 1), (1, 1, 1), (1, 1, 1), 1, dtype)
    # forward: what autocast computes
    with torch.autocast("cpu", dtype=dtype):
        ref = F.conv3d(x, w, b, padding=1)
    assert out.dtype == dtype and torch.equal(out, ref)
    grad_out = torch.randn(out.shape, generator=gen).to(dtype)
    out.backward(grad_out)
    # weight gradient in float32 of the reduced-precision input and gradient
    expected = _naive_weight_grad(grad_out, x.to(dtype), (3, 3, 3), (1, 1, 1))
    assert w.grad.dtype == torch.float32
    torch.testing.assert_close(w.grad.double(), expected, rtol=1e-5, atol=1e-5)
    # input and bias gradients are autocast's
    x2, w2, b2 = (t.detach().clone().requires_grad_() for t in (x, w, b))
    with torch.autocast("cpu", dtype=dtype):
        F.conv3d(x2, w2, b2, padding=1).backward(grad_out)
    torch.testing.assert_close(x.grad, x2.grad, rtol=0, atol=0)
    torch.testing.assert_close(b.grad, b2.grad, rtol=0, atol=0)


def _grads(net, x, *, precision, guard):
    net.zero_grad()
    ctx = torch.autocast("cpu", dtype=precision) if precision else torch.autocast(
        "cpu", enabled=False
    )
    with low_precision_safe_convs(net, enabled=guard), ctx:
        out = net(x)
    out.float().square().sum().backward()
    return {k: p.grad.clone() for k, p in net.named_parameters()}


def test_bf16_densenet_gradients_with_the_guard():
    # 32^3 input: the last two blocks run on 2^3 and 1^3 maps, where oneDNN's
    # bfloat16 weight-gradient kernel can be wrong (up to ~1e37) unguarded
    torch.manual_seed(0)
    net = DenseNet3D(
        growth_rate=8, block_config=(1, 1, 2, 2), num_init_features=16, bn_size=2,
        memory_efficient=False,
    )
    x = torch.randn(8, 1, 32, 32, 32)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    fp32 = _grads(net, x, precision=None, guard=False)
    net.load_state_dict(state)
    raw = _grads(net, x, precision=torch.bfloat16, guard=False)
    net.load_state_dict(state)
    got = _grads(net, x, precision=torch.bfloat16, guard=True)
    # the convolutions whose input has a side of at most 2 voxels
    tiny, handles = set(), []
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv3d):
            handles.append(m.register_forward_hook(
                lambda mod, args, out, name=name: tiny.add(name + ".weight")
                if min(args[0].shape[2:]) <= 2 else None
            ))
    with torch.no_grad():
        net(x)
    for h in handles:
        h.remove()
    assert "features.denseblock3.denselayer2.conv2.weight" in tiny
    assert "features.denseblock2.denselayer1.conv2.weight" not in tiny
    for name, g in got.items():
        assert torch.isfinite(g).all(), name
        if name in tiny:
            # same order of magnitude as float32's; unguarded can be ~1e37
            scale = float(fp32[name].abs().max())
            assert float((g - fp32[name]).abs().max()) < scale, name
        else:
            # the guard changes nothing else: autocast's own gradients
            assert torch.equal(g, raw[name]), name


def test_guard_touches_only_tiny_low_precision_convs():
    conv = nn.Conv3d(4, 3, 3, padding=1)
    calls = []
    real = _Float32WeightGrad.apply

    def counting(*args):
        calls.append(tuple(args[0].shape))
        return real(*args)

    _Float32WeightGrad.apply, saved = counting, _Float32WeightGrad.apply
    try:
        with low_precision_safe_convs(conv):
            conv(torch.randn(1, 4, 2, 2, 2))  # float32: untouched
            with torch.autocast("cpu", dtype=torch.bfloat16):
                conv(torch.randn(1, 4, 3, 3, 3))  # not tiny: untouched
                with torch.no_grad():
                    conv(torch.randn(1, 4, 2, 2, 2))  # no gradient: untouched
                conv(torch.randn(1, 4, 2, 5, 5))  # tiny: recomputed
        assert calls == [(1, 4, 2, 5, 5)]
        # hooks are gone after the block
        assert not conv._forward_hooks
        with torch.autocast("cpu", dtype=torch.bfloat16):
            conv(torch.randn(1, 4, 2, 2, 2))
        assert len(calls) == 1
    finally:
        _Float32WeightGrad.apply = saved


@pytest.mark.parametrize(
    "kernel, stride, padding, ceil",
    [
        (3, 2, 1, False),
        (2, 2, 0, False),
        (2, 2, 0, True),
        ((3, 1, 2), (2, 1, 2), (1, 0, 1), False),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_max_pool3d_matches_aten(kernel, stride, padding, ceil, dtype):
    gen = torch.Generator().manual_seed(0)
    # after a ReLU half the values tie at 0: the same argmax must win
    x = torch.randn(2, 5, 9, 8, 7, generator=gen, dtype=dtype).relu()
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    out = max_pool3d(a, kernel, stride, padding, ceil_mode=ceil)
    ref = F.max_pool3d(b, kernel, stride, padding, ceil_mode=ceil)
    assert out.is_contiguous() and torch.equal(out, ref)
    g = torch.randn(ref.shape, generator=gen, dtype=dtype)
    out.backward(g)
    ref.backward(g)
    assert torch.equal(a.grad, b.grad)


def test_max_pool3d_module_and_fallbacks():
    x = torch.randn(2, 3, 8, 8, 8)
    pool = MaxPool3d(3, 2, 1)
    assert torch.equal(pool(x), F.max_pool3d(x, 3, 2, 1))
    # non-contiguous input, 4-D input and return_indices go to torch itself
    xt = x.transpose(2, 4)
    assert torch.equal(max_pool3d(xt, 3, 2, 1), F.max_pool3d(xt, 3, 2, 1))
    out, idx = MaxPool3d(2, return_indices=True)(x)
    ref, ref_idx = F.max_pool3d(x, 2, return_indices=True)
    assert torch.equal(out, ref) and torch.equal(idx, ref_idx)
    # the state dict of a DenseNet is unchanged (pooling has no parameters)
    assert "features.pool0" not in "".join(DenseNet3D(block_config=(1,)).state_dict())


def test_safe_conv_guards_functional_convolutions():
    # DrasCLR's location-conditioned convolutions are functional calls: the
    # tiny-map guard must reach them too (its last layers see 2^3 maps)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 2, 2, 2, generator=gen)
    w = (torch.randn(6, 8, 3, 3, 3, generator=gen) * 0.1).requires_grad_()
    grad_out = torch.randn(2, 6, 2, 2, 2, generator=gen).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = safe_conv(x, w, None, 1, 1)
    assert out.dtype == torch.bfloat16
    out.backward(grad_out)
    # float32 weight gradient of the bfloat16-rounded input
    expected = _naive_weight_grad(
        grad_out, x.to(torch.bfloat16), (3, 3, 3), (1, 1, 1)
    )
    torch.testing.assert_close(w.grad.double(), expected, rtol=1e-5, atol=1e-5)
    # large maps, float32 and no-grad calls are the plain convolution
    y = torch.randn(2, 8, 5, 5, 5, generator=gen)
    for ctx in (torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad()):
        with ctx:
            assert torch.equal(safe_conv(y, w, None, 2, 1), F.conv3d(y, w, None, 2, 1))
    assert torch.equal(safe_conv(x, w, None, 1, 1), F.conv3d(x, w, None, 1, 1))


def test_drasclr_bf16_gradients_are_finite_and_close_to_fp32():
    from sklearn_cl3d.nn import DrasCLRNet

    torch.manual_seed(0)
    net = DrasCLRNet(n_experts=2, rep_dim=16, projection_dim=8)
    x = torch.randn(4, 1, 16, 16, 16)
    loc = torch.rand(4, 3) * 2 - 1

    def grads(autocast):
        net.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = net(x, loc)
        out = out[0] if isinstance(out, tuple) else out
        out.float().pow(2).sum().backward()
        return {n: p.grad.clone() for n, p in net.named_parameters()
                if p.grad is not None}

    fp32, bf16 = grads(False), grads(True)
    for name, g in bf16.items():
        assert torch.isfinite(g).all(), name
        if name.endswith("conv.weight"):
            # within the size of float32's gradient (unguarded: up to ~1e37);
            # conv biases are left out: BatchNorm cancels them, so their
            # float32 gradient is ~0 and bfloat16's is rounding noise
            scale = float(fp32[name].abs().max())
            assert float((g - fp32[name]).abs().max()) <= scale, name


# ------------------------------------------------------ 1x1x1 convolutions
def _naive_pointwise(x, weight):
    """out[n, o, v] = sum_i W[o, i] x[n, i, v], by explicit sums in float64."""
    x64, w64 = x.double(), weight.double().flatten(1)
    out = torch.zeros(x.shape[0], w64.shape[0], *x.shape[2:], dtype=torch.float64)
    for o in range(w64.shape[0]):
        for i in range(w64.shape[1]):
            out[:, o] += w64[o, i] * x64[:, i]
    return out


@pytest.mark.parametrize("shape", [(2, 5, 3, 4, 6), (1, 16, 8, 8, 8), (3, 1, 2, 2, 2)])
def test_pointwise_conv_matches_a_naive_sum_and_conv3d(shape):
    torch.manual_seed(0)
    conv = PointwiseConv3d(shape[1], 7)
    x = torch.randn(shape, requires_grad=True)
    assert conv.matmul_applies(x)
    out = conv(x)
    torch.testing.assert_close(
        out.double(), _naive_pointwise(x, conv.weight), rtol=1e-5, atol=1e-5
    )
    # gradients against the autograd of F.conv3d (oneDNN)
    g = torch.randn_like(out)
    gx, gw = torch.autograd.grad(out, (x, conv.weight), g)
    ref = F.conv3d(x, conv.weight)
    rx, rw = torch.autograd.grad(ref, (x, conv.weight), g)
    torch.testing.assert_close(gx, rx, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gw, rw, rtol=1e-5, atol=1e-4)


def test_pointwise_conv_gradcheck():
    conv = PointwiseConv3d(3, 2).double()
    x = torch.randn(2, 3, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    fn = _cpu_kernels._PointwiseConv.apply
    assert torch.autograd.gradcheck(fn, (x, conv.weight))


def test_pointwise_conv_falls_back_to_conv3d(monkeypatch):
    calls = []
    real = _cpu_kernels.pointwise_conv3d
    monkeypatch.setattr(_cpu_kernels, "pointwise_conv3d",
                        lambda *a: calls.append(1) or real(*a))
    conv = PointwiseConv3d(4, 3)
    x = torch.randn(2, 4, 3, 3, 3)
    conv(x)
    assert calls == [1]
    # channels-last and strided inputs: oneDNN's convolution, same values
    for inp in (x.contiguous(memory_format=torch.channels_last_3d), x[:, :, ::2]):
        out = conv(inp)
        assert calls == [1]
        torch.testing.assert_close(out, F.conv3d(inp, conv.weight))
    with torch.autocast("cpu", torch.bfloat16):
        out = conv(x)
    assert calls == [1] and out.dtype == torch.bfloat16  # autocast's own conv
    assert not conv.matmul_applies(x.to("meta"))


def test_pointwise_conv_state_dict_is_that_of_conv3d():
    conv = PointwiseConv3d(6, 4)
    plain = nn.Conv3d(6, 4, kernel_size=1, bias=False)
    assert {k: v.shape for k, v in conv.state_dict().items()} == {
        k: v.shape for k, v in plain.state_dict().items()
    }
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(2, 6, 3, 3, 3)
    torch.testing.assert_close(conv(x), plain(x))


def test_densenet121_runs_its_1x1_convolutions_as_matrix_products(monkeypatch):
    calls = []
    real = _cpu_kernels.pointwise_conv3d_backward
    monkeypatch.setattr(
        _cpu_kernels, "pointwise_conv3d_backward",
        lambda *a: calls.append(1) or real(*a),
    )
    import sklearn_cl3d.nn._densenet as densenet

    monkeypatch.setattr(densenet, "pointwise_conv3d_backward",
                        _cpu_kernels.pointwise_conv3d_backward)
    net = densenet121()
    pointwise = [m for m in net.modules() if isinstance(m, PointwiseConv3d)]
    assert len(pointwise) == 58 + 3  # every dense layer's conv1 and transitions
    net(torch.randn(2, 1, 32, 32, 32)).sum().backward()
    assert len(calls) == 61
