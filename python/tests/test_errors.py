"""Bad inputs raise clear Python exceptions; library failures arrive as EffnetError
with the status name and the library's message."""

import pytest
import torch

import effnet
import effnet.torch as et


def test_wrong_dtype():
    conv = et.Conv2d(4, 4, 3, padding=1)
    with pytest.raises(TypeError, match="float32.*float64"):
        conv(torch.randn(1, 4, 5, 5, dtype=torch.float64))
    with pytest.raises(TypeError, match="float32"):
        et.BatchNormAct2d(4)(torch.ones(1, 4, 2, 2, dtype=torch.float16))


def test_non_cpu_tensor():
    # A 'meta' tensor stands for any non-CPU device (a CUDA tensor takes this path).
    x = torch.empty(1, 4, 5, 5, device="meta")
    with pytest.raises(TypeError, match="CPU"):
        et.Conv2d(4, 4, 3, padding=1)(x)
    with pytest.raises(TypeError, match="CPU"):
        et.LayerNormProxyAct2d(4)(x)
    with pytest.raises(TypeError, match="CPU"):
        et.Conv2d(4, 4, 3, device="cuda")


def test_wrong_channels_and_rank():
    with pytest.raises(ValueError, match="expected 4 channels"):
        et.Conv2d(4, 4, 3, padding=1)(torch.randn(1, 5, 5, 5))
    with pytest.raises(ValueError, match="expected 6 channels"):
        et.GroupNormAct2d(2, 6)(torch.randn(1, 4, 5, 5))
    with pytest.raises(ValueError, match="4-D"):
        et.Conv2d(4, 4, 3)(torch.randn(4, 5, 5))
    with pytest.raises(TypeError, match="torch.Tensor"):
        et.Conv2d(4, 4, 3)([1, 2, 3])
    with pytest.raises(ValueError, match="divide"):
        et.GroupNormAct2d(3, 8)
    with pytest.raises(ValueError, match="activation"):
        et.BatchNormAct2d(4, act_layer="gelu")


def test_library_error_is_effnet_error():
    conv = et.Conv2d(4, 4, 5)  # no padding: a 5x5 kernel cannot fit a 3x3 input
    with pytest.raises(effnet.EffnetError) as info:
        conv(torch.randn(1, 4, 3, 3))
    err = info.value
    assert err.status == "EFFNET_INVALID_ARGUMENT"
    assert err.function == "effnet_conv_plan_create"
    assert err.message and err.message in str(err)


def test_library_error_from_a_raw_call():
    from effnet._lib import call

    with pytest.raises(effnet.EffnetError, match="EFFNET_INVALID_ARGUMENT") as info:
        call("effnet_context_create", 1, None)
    assert "out_ctx" in info.value.message or info.value.message
