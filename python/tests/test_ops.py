"""Activations, global average pooling, the SE gate and SqueezeExcite against
PyTorch; the thread setting."""

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close, layouts

import effnet
import effnet.torch as et


@pytest.mark.parametrize("mod,ref", [(et.SiLU(), F.silu), (et.ReLU(), F.relu),
                                     (et.Sigmoid(), torch.sigmoid)])
def test_activations(mod, ref):
    for x in layouts(torch.randn(2, 5, 3, 7) * 3):
        x.requires_grad_(True)
        y = mod(x)
        assert y.stride() == x.stride()
        want = ref(x.double())
        assert_close(y, want, 1e-6, "forward")
        dy = torch.randn_like(x)
        (g,) = torch.autograd.grad(y, x, dy)
        (r,) = torch.autograd.grad(want, x, dy.double())
        assert_close(g, r, 1e-5, "backward")
    v = torch.randn(17)  # any shape
    assert_close(mod(v), ref(v.double()), 1e-6, "1-D")


def test_pool_and_gate():
    for x in layouts(torch.randn(3, 9, 5, 7)):
        x.requires_grad_(True)
        gate = torch.rand(3, 9, requires_grad=True)
        y = et.global_avg_pool(x)
        want = x.double().mean((2, 3))
        assert_close(y, want, 1e-6, "pool")
        dy = torch.randn(3, 9)
        assert_close(torch.autograd.grad(y, x, dy)[0],
                     torch.autograd.grad(want, x, dy.double())[0], 1e-6, "pool dx")
        g = et.se_gate(x, gate)
        want = x.double() * gate.double()[:, :, None, None]
        assert_close(g, want, 1e-6, "gate")
        dy = torch.randn(want.shape)
        got = torch.autograd.grad(g, [x, gate], dy)
        ref = torch.autograd.grad(want, [x, gate], dy.double())
        assert_close(got[0], ref[0], 1e-6, "gate dx")
        assert_close(got[1], ref[1], 1e-5, "gate dgate")


def test_squeeze_excite_matches_composition():
    se = et.SqueezeExcite(16, 4)
    x = torch.randn(2, 16, 5, 5, requires_grad=True)
    scale = torch.rand(16) + 0.5
    y = se(x, scale)
    s = x.mean((2, 3), keepdim=True)
    s = F.conv2d(F.silu(F.conv2d(s, se.conv_reduce.weight, se.conv_reduce.bias)),
                 se.conv_expand.weight, se.conv_expand.bias)
    want = x * torch.sigmoid(s) * scale[None, :, None, None]
    assert_close(y, want, 1e-5, "SE forward")
    dy = torch.randn_like(want)
    p = [x, se.conv_reduce.weight, se.conv_expand.bias]
    for g, r in zip(torch.autograd.grad(y, p, dy), torch.autograd.grad(want, p, dy)):
        assert_close(g, r, 1e-4, "SE grads")


def test_threads_follow_torch_and_results_do_not_depend_on_them():
    conv = et.Conv2d(32, 32, 3, 1, 1, groups=2)
    x = torch.randn(4, 32, 17, 17)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert effnet.get_num_threads() == 1
        y1 = conv(x)
        torch.set_num_threads(2)
        assert effnet.get_num_threads() == 2
        y2 = conv(x)
        effnet.set_num_threads(3)
        assert effnet.get_num_threads() == 3
        y3 = conv(x)
    finally:
        effnet.set_num_threads(None)
        torch.set_num_threads(old)
    assert torch.equal(y1, y2) and torch.equal(y1, y3)
    with pytest.raises(ValueError):
        effnet.set_num_threads(0)
