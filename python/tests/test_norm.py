"""The norm + activation modules against PyTorch (BatchNorm, GroupNorm) and a float64
composition of the paper's formulas (LayerNorm + Proxy Norm)."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close

import effnet.torch as et

ACTS = {"identity": lambda t: t, "relu": F.relu, "swish": F.silu,
        "sigmoid": torch.sigmoid}


def grads(out, inputs, dy):
    return torch.autograd.grad(out, inputs, dy)


@pytest.mark.parametrize("act", ["identity", "swish", "relu"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_batchnorm_train_and_eval(act, channels_last):
    c = 13
    bn = et.BatchNormAct2d(c, eps=1e-3, momentum=0.2, act_layer=act)
    ref = torch.nn.BatchNorm2d(c, eps=1e-3, momentum=0.2).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
        ref.weight.copy_(bn.weight)
        ref.bias.copy_(bn.bias)
    x = torch.randn(3, c, 5, 7) * 2 + 0.5
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    y = bn(x)
    x64 = x.detach().double().requires_grad_(True)
    want = ACTS[act](ref(x64))
    assert_close(y, want, 1e-5, "train forward")
    assert_close(bn.running_mean, ref.running_mean, 1e-5, "running mean")
    assert_close(bn.running_var, ref.running_var, 1e-5, "running var")
    assert int(bn.num_batches_tracked) == 1
    dy = torch.randn(want.shape)
    got = grads(y, [x, bn.weight, bn.bias], dy)
    wants = grads(want, [x64, ref.weight, ref.bias], dy.double())
    for name, g, r in zip(["dx", "dgamma", "dbeta"], got, wants):
        assert_close(g, r, 1e-4, name)
    bn.eval()
    ref.eval()
    with torch.no_grad():
        assert_close(bn(x), ACTS[act](ref(x64)), 1e-5, "eval forward")
    xe = x.detach().requires_grad_(True)  # eval with grad: the PyTorch fallback
    assert_close(bn(xe), ACTS[act](ref(x64)), 1e-5, "eval forward with grad")


def test_batchnorm_cumulative_momentum():
    bn = et.BatchNormAct2d(4, momentum=None)
    ref = torch.nn.BatchNorm2d(4, momentum=None)
    for _ in range(3):
        x = torch.randn(2, 4, 3, 3)
        bn(x)
        ref(x)
    assert_close(bn.running_var, ref.running_var, 1e-5, "cumulative running var")


@pytest.mark.parametrize("groups,c", [(1, 12), (4, 12), (12, 12), (3, 21)])
@pytest.mark.parametrize("act", ["identity", "swish"])
def test_groupnorm(groups, c, act):
    gn = et.GroupNormAct2d(groups, c, eps=1e-5, act_layer=act)
    with torch.no_grad():
        gn.weight.uniform_(0.5, 1.5)
        gn.bias.normal_()
    x = (torch.randn(2, c, 7, 5) * 3 - 1).requires_grad_(True)
    y = gn(x)
    x64 = x.detach().double().requires_grad_(True)
    w64 = gn.weight.detach().double().requires_grad_(True)
    b64 = gn.bias.detach().double().requires_grad_(True)
    want = ACTS[act](F.group_norm(x64, groups, w64, b64, 1e-5))
    assert_close(y, want, 1e-5, "forward")
    dy = torch.randn(want.shape)
    for name, g, r in zip(["dx", "dgamma", "dbeta"],
                          grads(y, [x, gn.weight, gn.bias], dy),
                          grads(want, [x64, w64, b64], dy.double())):
        assert_close(g, r, 1e-4, name)
    with torch.no_grad():
        assert_close(gn(x), want, 1e-5, "inference forward")


def test_groupnorm_gamma_only_and_strided():
    c, g = 8, 2
    gn = et.GroupNormAct2d(1, c, eps=1e-3, bias=False)
    assert gn.bias is None and set(gn.state_dict()) == {"weight"}
    x = torch.randn(2, c, 4, 3, requires_grad=True)
    with torch.no_grad():
        gn.weight.uniform_(0.5, 2)
    want = F.group_norm(x.double(), 1, gn.weight.double(), None, 1e-3)
    assert_close(gn(x), want, 1e-5, "gamma-only LayerNorm")
    strided = et.GroupNormAct2d(g, c, grouping="strided")
    perm = torch.tensor([i for r in range(g) for i in range(r, c, g)])
    inv = torch.argsort(perm)
    want = F.group_norm(x.double()[:, perm], g, None, None, 1e-5)[:, inv]
    assert_close(strided(x), want, 1e-5, "strided grouping")


def proxy_reference(x, gamma, beta, pbeta, pgamma, act, variant, k, eps, eps_pn):
    """LayerNorm + Proxy Norm from the paper's formulas, float64, differentiable."""
    n = x.shape[0]
    flat = x.reshape(n, -1)
    mu = flat.mean(1).reshape(n, 1, 1, 1)
    var = flat.var(1, unbiased=False).reshape(n, 1, 1, 1)
    xhat = (x - mu) / torch.sqrt(var + eps)
    col = lambda t: t.reshape(1, -1, 1, 1)  # noqa: E731
    a = ACTS[act](col(gamma) * xhat + col(beta))
    kk = torch.arange(k, dtype=torch.float64)
    q = math.sqrt(2) * torch.erfinv(2 * (kk + 0.5) / k - 1)
    p = gamma[:, None] * (pbeta[:, None] + (1 + pgamma[:, None]) * q[None]) \
        + beta[:, None]
    r = ACTS[act](p)
    m = r.mean(1)
    v = ((r - m[:, None]) ** 2).mean(1)
    s = 1 / torch.sqrt(v + eps_pn)
    z = a - col(m)
    return (z * col(s) if variant == "full" else z), s


def test_proxy_oracle_at_init():
    """DESIGN.md's oracle at initialisation, K = 200: mu, s for swish and ReLU."""
    z, s = proxy_reference(torch.zeros(1, 1, 1, 1, dtype=torch.float64),
                           *[torch.tensor([v], dtype=torch.float64) for v in (1, 0, 0, 0)],
                           "swish", "delayed", 200, 1e-3, 0.03)
    assert abs(s.item() - 1.714977) < 1e-5
    pn = et.LayerNormProxyAct2d(3, variant="delayed")
    _, s = pn(torch.randn(2, 3, 4, 4))
    assert torch.allclose(s, torch.full((3,), 1.714977), atol=1e-4)
    pn = et.LayerNormProxyAct2d(3, act_layer="relu", variant="delayed")
    _, s = pn(torch.randn(2, 3, 4, 4))
    assert torch.allclose(s, torch.full((3,), 1.648373), atol=1e-4)


@pytest.mark.parametrize("variant", ["full", "delayed", "none"])
@pytest.mark.parametrize("act,k,eps_pn", [("swish", 200, 0.03), ("relu", 37, 0.1)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_layernorm_proxy(variant, act, k, eps_pn, channels_last):
    c, eps = 11, 1e-3
    pn = et.LayerNormProxyAct2d(c, act_layer=act, variant=variant, k=k, eps=eps,
                                eps_pn=eps_pn)
    with torch.no_grad():
        pn.weight.uniform_(0.5, 1.5)
        pn.bias.normal_(0, 0.5)
        pn.proxy_beta.normal_(0, 0.3)
        pn.proxy_gamma.normal_(0, 0.3)
    x = torch.randn(3, c, 5, 7) * 2 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    params = [pn.weight, pn.bias, pn.proxy_beta, pn.proxy_gamma]
    p64 = [p.detach().double().requires_grad_(True) for p in params]
    x64 = x.detach().double().requires_grad_(True)
    z_ref, s_ref = proxy_reference(x64, *p64, act, variant, k, eps, eps_pn)
    out = pn(x)
    z = out[0] if variant == "delayed" else out
    assert z.is_contiguous(memory_format=torch.channels_last)
    assert_close(z, z_ref, 1e-5, "z")
    dz = torch.randn(z.shape)
    ds = torch.randn(c)
    if variant == "delayed":
        assert_close(out[1], s_ref, 1e-5, "s")
        loss = (z * dz).sum() + (out[1] * ds).sum()
        loss_ref = (z_ref * dz.double()).sum() + (s_ref * ds.double()).sum()
    else:
        loss, loss_ref = (z * dz).sum(), (z_ref * dz.double()).sum()
    got = torch.autograd.grad(loss, [x] + params)
    want = torch.autograd.grad(loss_ref, [x64] + p64)
    for name, g, r in zip(["dx", "dgamma", "dbeta", "dbeta'", "dgamma'"], got, want):
        assert_close(g, r, 1e-4, name)


def test_proxy_bad_variant():
    with pytest.raises(ValueError, match="variant"):
        et.LayerNormProxyAct2d(4, variant="half")


@pytest.mark.parametrize("make", [
    lambda: et.BatchNormAct2d(6, act_layer="swish"),
    lambda: et.GroupNormAct2d(2, 6, act_layer="swish"),
    lambda: et.LayerNormProxyAct2d(6, variant="full"),
], ids=["bn", "gn", "lnpn"])
def test_directional_derivative(make):
    """gradcheck-style: <grad, v> against a central difference of the float32 op,
    for the input and every parameter at once."""
    mod = make()
    with torch.no_grad():
        for p in mod.parameters():
            p.add_(0.2 * torch.randn_like(p))
    x = torch.randn(2, 6, 5, 3, requires_grad=True)
    dy = torch.randn(2, 6, 5, 3)
    leaves = [x] + list(mod.parameters())
    loss = lambda: (mod(x) * dy).sum()  # noqa: E731
    g = torch.autograd.grad(loss(), leaves)
    vs = [torch.randn_like(t) for t in leaves]
    h = 1e-2
    with torch.no_grad():
        for t, v in zip(leaves, vs):
            t.add_(h * v)
        up = loss().item()
        for t, v in zip(leaves, vs):
            t.sub_(2 * h * v)
        down = loss().item()
        for t, v in zip(leaves, vs):
            t.add_(h * v)
    fd = (up - down) / (2 * h)
    an = sum((gi * v).sum().item() for gi, v in zip(g, vs))
    assert abs(fd - an) <= 3e-3 * max(1.0, abs(an)), (fd, an)
