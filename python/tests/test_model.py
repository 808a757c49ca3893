"""efficientnet(arch) and swap_modules against timm's own networks (random weights)."""

import copy

import pytest
import torch
from conftest import assert_close

import effnet.torch as et

timm = pytest.importorskip("timm")


def random_timm(arch):
    """timm's network with random weights and random BatchNorm statistics."""
    model = timm.create_model(arch, pretrained=False)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
    return model


def grads_close(a, b, tol):
    """Every gradient of ``a`` equals ``b``'s, relative to the largest gradient norm
    (some gradients are zero up to rounding, e.g. of a bias before a BatchNorm)."""
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert set(pa) == set(pb)
    scale = max(p.grad.norm().item() for p in pa.values())
    assert scale > 0
    for name, p in pa.items():
        err = (p.grad - pb[name].grad).norm().item() / max(p.grad.norm().item(),
                                                           1e-3 * scale)
        assert err < tol, f"{name}: gradient relative error {err:.3g}"


@pytest.mark.parametrize("arch", ["efficientnet_b0", "tf_efficientnet_b0"])
def test_timm_logits(arch):
    ref = random_timm(arch).eval()
    model = et.efficientnet(arch, pretrained=ref.state_dict()).eval()
    x = torch.randn(2, 3, 67, 75)  # odd sizes: TF SAME pads asymmetrically
    with torch.no_grad():
        assert_close(model(x), ref(x), 1e-4, f"{arch} logits")


@pytest.mark.parametrize("arch", ["efficientnet_b0", "tf_efficientnet_b0"])
def test_timm_training_step(arch):
    ref = random_timm(arch).train()
    model = et.efficientnet(arch, pretrained=ref.state_dict(), drop_rate=0.0).train()
    ref.drop_rate = 0.0
    x = torch.randn(3, 3, 49, 51)
    labels = torch.tensor([1, 5, 7])
    for m in (ref, model):
        torch.nn.functional.cross_entropy(m(x), labels).backward()
    grads_close(ref, model, 1e-3)
    assert_close(model.bn1.running_var, ref.bn1.running_var, 1e-5, "running var")


@pytest.mark.parametrize("arch", ["efficientnet_b0", "tf_efficientnet_b0"])
def test_swap_modules(arch):
    ref = random_timm(arch).train()
    swapped = et.swap_modules(copy.deepcopy(ref))
    assert swapped.effnet_swapped > 100
    assert isinstance(swapped.conv_stem, et.Conv2d)
    assert isinstance(swapped.blocks[1][0].bn1, et.BatchNormAct2d)
    x = torch.randn(2, 3, 45, 47)
    y, want = swapped(x), ref(x)
    assert_close(y, want, 1e-4, "logits after the swap")
    g = torch.randn_like(want)
    y.backward(g)
    want.backward(g)
    grads_close(ref, swapped, 1e-3)
    swapped.eval()
    ref.eval()
    with torch.no_grad():
        assert_close(swapped(x), ref(x), 1e-4, "eval logits after the swap")


def test_paper_variants():
    counts = {"efficientnet_b0": 5_288_548, "b0_g16_gn": 5_913_796}
    for arch, n in counts.items():
        assert sum(p.numel() for p in et.efficientnet(arch).parameters()) == n
    model = et.efficientnet("b0_g16_lnpn")
    blk = model.blocks[2][0]
    assert isinstance(blk.bn2, et.LayerNormProxyAct2d) and blk.bn2.variant == "delayed"
    assert blk.conv_dw.groups == blk.conv_dw.in_channels // 16
    assert isinstance(blk.bn3, et.GroupNormAct2d) and blk.bn3.bias is None
    assert model.bn2.variant == "none" and model.bn1.variant == "full"
    tiny = et.efficientnet("tiny_g16_lnpn", num_classes=8)
    y = tiny(torch.randn(2, 3, 32, 32))
    y.sum().backward()
    assert y.shape == (2, 8)
    assert all(p.grad is not None for p in tiny.parameters())
    with pytest.raises(ValueError, match="unknown architecture"):
        et.efficientnet("b9_g16_lnpn")


def test_effnet_checkpoint(tmp_path):
    from safetensors.torch import save_file

    model = et.efficientnet("tiny_g16_gn", num_classes=8)
    state = {}
    for name, t in model.state_dict().items():  # effnet's layouts, as the CLI saves
        if t.dim() == 4:
            t = t.permute(2, 3, 1, 0)
        elif name == "classifier.weight":
            t = t.t()
        t = t.contiguous()
        state[name] = t
        state["ema." + name] = 2 * t
        state["optim." + name + ".momentum"] = torch.zeros_like(t)
    path = tmp_path / "ckpt.safetensors"
    save_file(state, str(path), metadata={"format": "effnet-checkpoint",
                                          "cfg.arch": "tiny_g16_gn"})
    loaded = et.efficientnet("tiny_g16_gn", pretrained=path)
    ema = et.efficientnet("tiny_g16_gn", pretrained=path, ema=True)
    for name, t in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], t), name
        assert torch.equal(ema.state_dict()[name], 2 * t), name
