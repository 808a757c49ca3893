"""Shared helpers of the effnet Python tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
    yield


def rel_err(got, want):
    """‖got − want‖ / ‖want‖ in float64 (want must not be zero)."""
    got, want = got.double(), want.double()
    scale = want.norm().item()
    assert scale > 0, "reference is zero: the comparison would prove nothing"
    return (got - want).norm().item() / scale


def assert_close(got, want, tol=1e-5, what=""):
    """Relative (Frobenius) closeness with a message that says what differs."""
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    err = rel_err(got, want)
    assert err < tol, f"{what}: relative error {err:.3g} > {tol}"


def layouts(t):
    """``t`` in both memory layouts: NCHW-contiguous and channels-last."""
    return [t.contiguous(), t.contiguous(memory_format=torch.channels_last)]
