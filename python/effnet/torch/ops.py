"""Element-wise activations, global average pooling and the squeeze-excite gate on
effnet's kernels, and the ``SqueezeExcite`` block built from them."""

from ctypes import addressof

import torch
from torch import nn

from .. import _descriptors as D
from .._lib import call, context
from ._tensor import activation_name, check_input, check_tensor, dense, nhwc
from .conv import Conv2d


def _dense_any(x):
    """``x`` dense in either NCHW or NHWC memory (an activation takes any layout)."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else \
        x.contiguous()


def _like(x, t):
    """``t`` with the memory layout of ``x`` (both dense, same shape)."""
    if x.stride() == t.stride():
        return t
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return t.contiguous(memory_format=torch.channels_last)
    return t.contiguous()


class _ActFunction(torch.autograd.Function):
    """``effnet_activation_forward`` / ``_backward``."""

    @staticmethod
    def forward(ctx, x, act):
        y = torch.empty_like(x)
        call("effnet_activation_forward", context(), D.ACT[act], x.data_ptr(),
             y.data_ptr(), x.numel())
        ctx.save_for_backward(x)
        ctx.act = act
        return y

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        dy = _like(x, dy)
        dx = torch.empty_like(x)
        call("effnet_activation_backward", context(), D.ACT[ctx.act], x.data_ptr(),
             dy.data_ptr(), dx.data_ptr(), x.numel())
        return dx, None


def activation(x, act):
    """``act(x)`` element-wise for a float32 CPU tensor of any shape (``act``: a name
    or module class as in ``Activation``); the output keeps ``x``'s layout."""
    name = activation_name(act)
    check_tensor(x, f"{name} input")
    return _ActFunction.apply(_dense_any(x), name)


class Activation(nn.Module):
    """An element-wise activation on effnet's kernel: ``"relu"``, ``"sigmoid"``,
    ``"swish"`` (SiLU) or ``"identity"``."""

    def __init__(self, act="swish", inplace=False):
        super().__init__()
        self.act = activation_name(act)

    def extra_repr(self):
        return self.act

    def forward(self, x):
        """``act(x)``."""
        return activation(x, self.act)


class SiLU(Activation):
    """Drop-in ``nn.SiLU`` (swish) on effnet's kernel."""

    def __init__(self, inplace=False):
        super().__init__("swish")


class ReLU(Activation):
    """Drop-in ``nn.ReLU`` on effnet's kernel."""

    def __init__(self, inplace=False):
        super().__init__("relu")


class Sigmoid(Activation):
    """Drop-in ``nn.Sigmoid`` on effnet's kernel."""

    def __init__(self):
        super().__init__("sigmoid")


def _nhwc_desc(x):
    n, c, h, w = x.shape
    return D.new(D.Nhwc, batch=n, height=h, width=w, channels=c)


class _PoolFunction(torch.autograd.Function):
    """``effnet_global_avg_pool_forward`` / ``_backward``."""

    @staticmethod
    def forward(ctx, x):
        desc = _nhwc_desc(x)
        n, c = x.shape[:2]
        y = torch.empty(n, c)
        call("effnet_global_avg_pool_forward", context(), addressof(desc),
             x.data_ptr(), x.numel(), y.data_ptr(), y.numel())
        ctx.shape = tuple(x.shape)
        return y

    @staticmethod
    def backward(ctx, dy):
        n, c, h, w = ctx.shape
        desc = D.new(D.Nhwc, batch=n, height=h, width=w, channels=c)
        dy = dense(dy)
        dx = torch.empty((n, c, h, w), memory_format=torch.channels_last)
        call("effnet_global_avg_pool_backward", context(), addressof(desc),
             dy.data_ptr(), dy.numel(), dx.data_ptr(), dx.numel(), 0)
        return dx


def global_avg_pool(x):
    """The mean over H and W of an (N, C, H, W) float32 CPU tensor, shape (N, C)."""
    return _PoolFunction.apply(check_input(x, "global_avg_pool input"))


class GlobalAvgPool2d(nn.Module):
    """Global average pooling: (N, C, H, W) → (N, C) with ``flatten=True``, else
    (N, C, 1, 1) like ``nn.AdaptiveAvgPool2d(1)``."""

    def __init__(self, flatten=False):
        super().__init__()
        self.flatten = flatten

    def forward(self, x):
        """The pooled tensor."""
        y = global_avg_pool(x)
        return y if self.flatten else y[:, :, None, None]


class _GateFunction(torch.autograd.Function):
    """``effnet_gate_forward`` / ``_backward``."""

    @staticmethod
    def forward(ctx, x, gate):
        desc = _nhwc_desc(x)
        y = torch.empty_like(x)
        call("effnet_gate_forward", context(), addressof(desc), x.data_ptr(),
             x.numel(), gate.data_ptr(), gate.numel(), y.data_ptr(), y.numel())
        ctx.save_for_backward(x, gate)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, gate = ctx.saved_tensors
        desc = _nhwc_desc(x)
        dy = nhwc(dy)
        dx = torch.empty_like(x)
        dgate = torch.empty_like(gate)
        call("effnet_gate_backward", context(), addressof(desc), dy.data_ptr(),
             dy.numel(), x.data_ptr(), x.numel(), gate.data_ptr(), gate.numel(),
             dx.data_ptr(), dx.numel(), dgate.data_ptr(), dgate.numel())
        return dx, dgate


def se_gate(x, gate):
    """``x * gate`` with ``x`` (N, C, H, W) and ``gate`` (N, C) or (N, C, 1, 1): the
    squeeze-excite multiply, channels-last output."""
    x = check_input(x, "se_gate input")
    n, c = x.shape[:2]
    check_tensor(gate, "se_gate gate")
    if gate.numel() != n * c:
        raise ValueError(f"se_gate: the gate must have N*C = {n * c} elements (shape "
                         f"(N, C) or (N, C, 1, 1)), got shape {tuple(gate.shape)}")
    return _GateFunction.apply(x, dense(gate.reshape(n, c)))


class SqueezeExcite(nn.Module):
    """EfficientNet's squeeze-excite, named as timm's: mean over H, W → ``conv_reduce``
    (1×1, bias) → ``act_layer`` → ``conv_expand`` (1×1, bias) → sigmoid → multiply.
    ``forward(x, scale=None)``: with ``scale`` (C,) the gate is multiplied by it
    (Proxy Norm's delayed scale folded into the gate)."""

    def __init__(self, channels, rd_channels, act_layer="swish"):
        super().__init__()
        self.conv_reduce = Conv2d(channels, rd_channels, 1, bias=True)
        self.act = activation_name(act_layer)
        self.conv_expand = Conv2d(rd_channels, channels, 1, bias=True)

    def forward(self, x, scale=None):
        """``x * sigmoid(expand(act(reduce(mean(x))))) (* scale)``."""
        s = global_avg_pool(x)[:, :, None, None]
        s = activation(self.conv_reduce(s), self.act)
        g = activation(self.conv_expand(s), "sigmoid")
        g = g.reshape(g.shape[0], g.shape[1])
        if scale is not None:
            g = g * scale
        return se_gate(x, g)
