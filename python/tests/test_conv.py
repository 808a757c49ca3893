"""effnet.torch.Conv2d against a float64 ``F.conv2d``: forward, input and parameter
gradients, every group size, both paddings, stride 2 on odd inputs, both layouts."""

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close

import effnet.torch as et
from effnet.torch.conv import tf_same_pads

# (C_in, C_out, groups, kernel, stride, padding, N, H, W)
CASES = [
    (3, 8, 1, 3, 2, 1, 2, 9, 11),        # stem-like, odd input, stride 2
    (32, 32, 32, 3, 1, 1, 2, 7, 5),      # depthwise
    (24, 24, 24, 5, 2, 2, 1, 13, 9),     # depthwise 5x5 stride 2
    (32, 32, 2, 3, 2, 1, 2, 9, 8),       # G16
    (48, 96, 6, 3, 1, 1, 1, 6, 7),       # groups of 8, widening
    (64, 64, 2, 5, 2, "same", 2, 11, 7),  # G32, TF SAME, odd input
    (16, 24, 1, 1, 1, 0, 3, 5, 7),       # pointwise
    (12, 12, 12, 3, 2, "same", 2, 10, 9),  # depthwise SAME, even/odd
    (5, 7, 1, 2, 1, "same", 1, 6, 6),    # even kernel SAME: extra pad after
    (20, 10, 5, 3, 1, "valid", 1, 8, 9),
]


def reference(x, weight, bias, stride, padding):
    """float64 conv2d with TF-SAME padding done by hand."""
    x, weight = x.double(), weight.double()
    bias = None if bias is None else bias.double()
    groups = x.shape[1] // weight.shape[1]
    if padding == "same":
        kh, kw = weight.shape[2:]
        pt, pb = tf_same_pads(x.shape[2], kh, stride, 1)
        pl, pr = tf_same_pads(x.shape[3], kw, stride, 1)
        x = F.pad(x, (pl, pr, pt, pb))
        padding = 0
    return F.conv2d(x, weight, bias, stride, padding, 1, groups)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_backward(case, channels_last, bias):
    cin, cout, groups, k, stride, padding, n, h, w = case
    conv = et.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=bias)
    x = torch.randn(n, cin, h, w)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    y = conv(x)
    want = reference(x.detach(), conv.weight.detach(), conv.bias, stride, padding)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_close(y, want, 1e-5, "forward")

    dy = torch.randn_like(want).float()
    params = [x, conv.weight] + ([conv.bias] if bias else [])
    got = torch.autograd.grad(y, params, dy)
    x64 = x.detach().double().requires_grad_(True)
    w64 = conv.weight.detach().double().requires_grad_(True)
    b64 = conv.bias.detach().double().requires_grad_(True) if bias else None
    ref = reference(x64, w64, b64, stride, padding)
    wants = torch.autograd.grad(ref, [x64, w64] + ([b64] if bias else []), dy.double())
    for name, g, r in zip(["dx", "dweight", "dbias"], got, wants):
        assert_close(g, r, 2e-5, name)

    with torch.no_grad():  # packed-weights inference path
        assert_close(conv(x), want, 1e-5, "packed forward")


def test_same_padding_matches_tf_rule():
    # TF SAME: out = ceil(in / stride), the odd padding pixel at the bottom/right.
    assert tf_same_pads(9, 3, 2, 1) == (1, 1)
    assert tf_same_pads(10, 3, 2, 1) == (0, 1)
    assert tf_same_pads(224, 5, 2, 1) == (1, 2)
    assert tf_same_pads(7, 1, 1, 1) == (0, 0)
    conv = et.Conv2d(4, 4, 3, 2, "same", groups=4, bias=False)
    assert conv(torch.randn(1, 4, 10, 9)).shape == (1, 4, 5, 5)


def test_matches_nn_conv2d_and_state_dict():
    ref = torch.nn.Conv2d(32, 64, 3, 2, 1, groups=2)
    conv = et.Conv2d(32, 64, 3, 2, 1, groups=2)
    assert set(conv.state_dict()) == set(ref.state_dict())
    conv.load_state_dict(ref.state_dict())
    x = torch.randn(2, 32, 15, 13)
    assert_close(conv(x), ref(x), 1e-5, "vs nn.Conv2d")
    assert isinstance(conv, torch.nn.Conv2d)


def test_directional_derivative():
    """gradcheck-style: <grad, v> against a central difference of the float32 op."""
    conv = et.Conv2d(16, 16, 3, 2, "same", groups=1, bias=True)
    x = torch.randn(1, 16, 7, 9, requires_grad=True)
    dy = torch.randn_like(conv(x))
    loss = lambda: (conv(x) * dy).sum()  # noqa: E731
    gx, gw = torch.autograd.grad(loss(), [x, conv.weight])
    for param, grad in ((x, gx), (conv.weight, gw)):
        v = torch.randn_like(param)
        h = 1e-2
        with torch.no_grad():
            param += h * v
            up = loss()
            param -= 2 * h * v
            down = loss()
            param += h * v
        fd = (up - down).item() / (2 * h)
        an = (grad * v).sum().item()
        assert abs(fd - an) <= 2e-3 * max(1.0, abs(an)), (fd, an)


def test_weight_converted_once_per_step():
    conv = et.Conv2d(16, 16, 3, 1, 1, groups=1)
    opt = torch.optim.SGD(conv.parameters(), lr=0.1)
    x = torch.randn(2, 16, 5, 5)
    conv(x).sum().backward()
    first = conv.effnet_weight()
    conv(x).sum().backward()
    assert conv.effnet_weight() is first, "weight converted again without a change"
    opt.step()  # in-place update bumps the version counter
    second = conv.effnet_weight()
    assert second is not first
    assert_close(second.permute(3, 2, 0, 1), conv.weight.detach(), 1e-7, "layout")
    with torch.no_grad():  # the packed weights follow the update too
        y = conv(x)
        conv.weight.mul_(2.0)
        y2 = conv(x)
    want = reference(x, conv.weight.detach(), conv.bias.detach(), 1, 1)
    assert_close(y2, want, 1e-5, "packed after in-place change")
    assert (y2 - y).abs().max() > 1e-3


def test_plans_cached_per_shape_and_deepcopy_drops_them():
    import copy

    conv = et.Conv2d(8, 8, 3, 1, 1)
    conv(torch.randn(1, 8, 5, 5))
    conv(torch.randn(1, 8, 5, 5))
    conv(torch.randn(2, 8, 5, 5))
    assert len(conv._plans) == 2
    twin = copy.deepcopy(conv)
    assert len(twin._plans) == 0
    x = torch.randn(1, 8, 5, 5)
    assert torch.equal(twin(x), conv(x))


def test_zero_copy_for_channels_last_and_chains_stay_channels_last():
    from effnet.torch._tensor import check_input

    x = torch.randn(2, 8, 5, 7)
    cl = x.contiguous(memory_format=torch.channels_last)
    assert check_input(cl, "x").data_ptr() == cl.data_ptr()  # passed as is
    converted = check_input(x, "x")  # NCHW: converted once
    assert converted.data_ptr() != x.data_ptr()
    assert converted.is_contiguous(memory_format=torch.channels_last)
    chain = torch.nn.Sequential(et.Conv2d(8, 16, 3, 2, "same", groups=8),
                                et.BatchNormAct2d(16, act_layer="swish"),
                                et.Conv2d(16, 8, 1))
    y = chain(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(chain(cl), y)


def test_pickle_round_trip():
    import pickle

    conv = et.Conv2d(8, 8, 3, 1, "same", groups=2)
    x = torch.randn(1, 8, 6, 5)
    y = conv(x)
    twin = pickle.loads(pickle.dumps(conv))
    assert len(twin._plans) == 0 and twin.padding == "same"
    assert torch.equal(twin(x), y)
