"""``effnet.torch.Conv2d``: ``nn.Conv2d`` run by effnet's convolution kernels."""

import math
from ctypes import addressof, c_size_t

import torch
from torch import nn

from .. import _descriptors as D
from .._lib import Handle, call, context
from ._cache import Cache, version_key
from ._tensor import check_input, empty_nhwc, nhwc, ptr, scratch


def tf_same_pads(size, kernel, stride, dilation):
    """TensorFlow ``SAME`` padding of one axis: ``(before, after)`` such that the
    output has ``ceil(size / stride)`` positions; the odd pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class _ConvPlan:
    """A C convolution plan for one input shape, its buffer sizes, and the weights
    packed for it (inference)."""

    def __init__(self, desc):
        self.handle = Handle("effnet_conv_plan_create", "effnet_conv_plan_destroy",
                             context(), addressof(desc))
        shape = D.new(D.ConvShape)
        call("effnet_conv_plan_shape", self.handle.ptr, addressof(shape))
        self.ptr = self.handle.ptr
        self.out_h, self.out_w = shape.out_h, shape.out_w
        self.x_len, self.y_len = shape.x_len, shape.y_len
        self.w_len, self.bias_len = shape.w_len, shape.bias_len
        self.packed = None
        self.packed_key = None
        self.ws_sizes = {}

    def workspace(self, ctx, pass_):
        """``(pointer, bytes)`` of a workspace for pass ``pass_`` (0 forward, 1
        backward-data, 2 backward-weight) on context ``ctx``."""
        n = self.ws_sizes.get((ctx, pass_))
        if n is None:
            out = c_size_t()
            call("effnet_conv_workspace_size", ctx, self.ptr, pass_, addressof(out))
            n = self.ws_sizes[(ctx, pass_)] = out.value
        return scratch(n)


class Conv2d(nn.Conv2d):
    """A drop-in ``nn.Conv2d`` (same constructor, ``weight`` and ``bias``) computed by
    effnet: any ``groups`` dividing both channel counts, any stride and dilation,
    symmetric ``padding`` (int or pair) or ``padding="same"`` with TensorFlow's
    ``SAME`` semantics (also for stride 2: the extra pixel at the bottom/right,
    computed from each input's size), ``padding_mode="zeros"`` only.

    Inputs are float32 CPU tensors; channels-last ones are read in place, others are
    converted once. Outputs are channels-last. The weight is converted to effnet's
    ``[kh][kw][C_in/groups][C_out]`` layout once per change of the parameter (keyed
    on its version counter); without autograd (``torch.no_grad()`` or no tensor
    requiring grad) the forward runs on weights packed once per change.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, padding_mode="zeros", device=None,
                 dtype=None):
        tf_same = isinstance(padding, str) and padding == "same"
        if isinstance(padding, str) and padding not in ("same", "valid"):
            raise ValueError(f"padding must be an int, a pair, 'valid' or 'same'; got "
                             f"{padding!r}")
        if padding_mode != "zeros":
            raise ValueError(f"effnet pads with zeros only; got padding_mode="
                             f"{padding_mode!r}")
        if device is not None and torch.device(device).type != "cpu":
            raise TypeError(f"effnet runs on the CPU; got device={device!r}")
        if dtype is not None and dtype != torch.float32:
            raise TypeError(f"effnet computes in torch.float32; got dtype={dtype}")
        super().__init__(in_channels, out_channels, kernel_size, stride,
                         0 if tf_same else padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        if tf_same:
            self.padding = "same"
        self._plans = Cache()
        self._weight_cache = Cache()

    def _pads(self, h, w):
        if self.padding == "same":
            return (tf_same_pads(h, self.kernel_size[0], self.stride[0],
                                 self.dilation[0])
                    + tf_same_pads(w, self.kernel_size[1], self.stride[1],
                                   self.dilation[1]))
        if self.padding == "valid":
            return 0, 0, 0, 0
        ph, pw = self.padding
        return ph, ph, pw, pw

    def _plan(self, n, h, w):
        key = (n, h, w)
        plan = self._plans.get(key)
        if plan is None:
            pt, pb, pl, pr = self._pads(h, w)
            desc = D.new(
                D.ConvDesc, batch=n, in_h=h, in_w=w, in_channels=self.in_channels,
                out_channels=self.out_channels,
                group_size=self.in_channels // self.groups,
                kernel_h=self.kernel_size[0], kernel_w=self.kernel_size[1],
                stride_h=self.stride[0], stride_w=self.stride[1],
                dilation_h=self.dilation[0], dilation_w=self.dilation[1],
                pad_top=pt, pad_bottom=pb, pad_left=pl, pad_right=pr)
            plan = self._plans[key] = _ConvPlan(desc)
        return plan

    def effnet_weight(self):
        """The weight in effnet's layout ``[kh][kw][C_in/groups][C_out]`` (a cached
        copy, remade only after the parameter changed)."""
        key = version_key(self.weight)
        hit = self._weight_cache.get("w")
        if hit is None or hit[0] != key:
            with torch.no_grad():
                w = self.weight.detach().permute(2, 3, 1, 0).contiguous()
            if w.dtype != torch.float32 or w.device.type != "cpu":
                raise TypeError(f"Conv2d weight must be float32 on the CPU; got "
                                f"{w.dtype} on {w.device}")
            hit = self._weight_cache["w"] = (key, w)
        return hit[1]

    def _bias(self):
        return None if self.bias is None else self.bias.detach()

    def forward(self, x):
        """``y = conv(x, weight) + bias`` as ``nn.Conv2d`` computes it (channels-last
        output)."""
        x = check_input(x, "Conv2d input", self.in_channels)
        n, _, h, w = x.shape
        plan = self._plan(n, h, w)
        params = [self.weight] if self.bias is None else [self.weight, self.bias]
        if torch.is_grad_enabled() and (x.requires_grad
                                        or any(p.requires_grad for p in params)):
            return _ConvFunction.apply(x, self.weight, self.bias, self, plan)
        return self._forward_packed(x, plan)

    def _forward_packed(self, x, plan):
        w = self.effnet_weight()
        key = version_key(self.weight)
        if plan.packed_key != key:
            size = c_size_t()
            call("effnet_conv_packed_weights_size", plan.ptr, addressof(size))
            buf = torch.empty(math.ceil(size.value / 4), dtype=torch.float32)
            call("effnet_conv_pack_weights", context(), plan.ptr, w.data_ptr(),
                 plan.w_len, buf.data_ptr(), size.value)
            plan.packed, plan.packed_bytes, plan.packed_key = buf, size.value, key
        y = empty_nhwc(x.shape[0], self.out_channels, plan.out_h, plan.out_w)
        b = self._bias()
        ctx = context()
        call("effnet_conv_forward_packed", ctx, plan.ptr, x.data_ptr(),
             plan.x_len, plan.packed.data_ptr(), plan.packed_bytes, ptr(b),
             0 if b is None else plan.bias_len, y.data_ptr(), plan.y_len,
             *plan.workspace(ctx, 0))
        return y


class _ConvFunction(torch.autograd.Function):
    """The convolution with its effnet backward passes (data, weight and bias)."""

    @staticmethod
    def forward(ctx, x, weight, bias, mod, plan):
        w = mod.effnet_weight()
        b = mod._bias()
        y = empty_nhwc(x.shape[0], mod.out_channels, plan.out_h, plan.out_w)
        c = context()
        call("effnet_conv_forward_ws", c, plan.ptr, x.data_ptr(), plan.x_len,
             w.data_ptr(), plan.w_len, ptr(b), 0 if b is None else plan.bias_len,
             y.data_ptr(), plan.y_len, *plan.workspace(c, 0))
        ctx.save_for_backward(x)
        ctx.w, ctx.plan, ctx.has_bias = w, plan, bias is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        plan, w = ctx.plan, ctx.w
        dy = nhwc(dy)
        dx = dweight = dbias = None
        c = context()
        if ctx.needs_input_grad[0]:
            dx = torch.empty_like(x)
            call("effnet_conv_backward_data_ws", c, plan.ptr, dy.data_ptr(),
                 plan.y_len, w.data_ptr(), plan.w_len, dx.data_ptr(), plan.x_len,
                 *plan.workspace(c, 1))
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            dw = torch.empty_like(w)
            db = torch.empty(plan.bias_len) if ctx.has_bias else None
            call("effnet_conv_backward_weight_ws", c, plan.ptr, x.data_ptr(),
                 plan.x_len, dy.data_ptr(), plan.y_len, dw.data_ptr(), plan.w_len,
                 ptr(db), 0 if db is None else plan.bias_len, 0,
                 *plan.workspace(c, 2))
            if ctx.needs_input_grad[1]:
                dweight = dw.permute(3, 2, 0, 1).contiguous()
            if ctx.needs_input_grad[2]:
                dbias = db
        return dx, dweight, dbias, None, None
