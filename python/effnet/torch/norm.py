"""Normalizations with a fused activation, run by effnet: ``BatchNormAct2d``,
``GroupNormAct2d`` (LayerNorm is one group) and ``LayerNormProxyAct2d`` (LayerNorm +
Proxy Norm activation)."""

from ctypes import addressof, c_size_t

import torch
import torch.nn.functional as F
from torch import nn

from .. import _descriptors as D
from .._lib import Handle, call, context
from ._cache import Cache
from ._tensor import activation_name, check_input, dense, nhwc, ptr, scratch

_TORCH_ACT = {"identity": lambda t: t, "relu": F.relu, "sigmoid": torch.sigmoid,
              "swish": F.silu}


class _NormPlan:
    """A C normalization plan for one input shape and its buffer sizes."""

    def __init__(self, desc):
        self.handle = Handle("effnet_norm_plan_create", "effnet_norm_plan_destroy",
                             context(), addressof(desc))
        self.ptr = self.handle.ptr
        shape = D.new(D.NormShape)
        call("effnet_norm_plan_shape", self.ptr, addressof(shape))
        self.x_len, self.affine_len = shape.x_len, shape.affine_len
        self.saved_len, self.running_len = shape.saved_len, shape.running_len
        self.ws_sizes = {}

    def workspace(self, ctx, pass_):
        """``(pointer, bytes)`` of a workspace for pass ``pass_`` (0 forward, 1
        inference, 2 backward)."""
        n = self.ws_sizes.get(pass_)
        if n is None:
            out = c_size_t()
            call("effnet_norm_workspace_size", ctx, self.ptr, pass_, addressof(out))
            n = self.ws_sizes[pass_] = out.value
        return scratch(n)


def _affine(weight, bias):
    """effnet's ``[2][C]`` affine from gamma and (possibly absent) beta."""
    if weight is None:
        return None
    w = weight.detach()
    b = torch.zeros_like(w) if bias is None else bias.detach()
    return torch.stack([w, b])


class _NormFunction(torch.autograd.Function):
    """Training forward (statistics of ``x``) and backward of a normalization plan;
    with ``momentum`` not None also BatchNorm's running-statistics update."""

    @staticmethod
    def forward(ctx, x, weight, bias, plan, running, momentum):
        affine = _affine(weight, bias)
        y = torch.empty_like(x)
        saved = torch.empty(plan.saved_len)
        c = context()
        call("effnet_norm_forward_ws", c, plan.ptr, x.data_ptr(), plan.x_len,
             ptr(affine), plan.affine_len, y.data_ptr(), plan.x_len, saved.data_ptr(),
             plan.saved_len, *plan.workspace(c, 0))
        if momentum is not None:
            call("effnet_norm_update_running", context(), plan.ptr, saved.data_ptr(),
                 plan.saved_len, running.data_ptr(), plan.running_len, momentum)
        ctx.save_for_backward(x)
        ctx.affine, ctx.saved, ctx.plan = affine, saved, plan
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        plan, affine = ctx.plan, ctx.affine
        dy = nhwc(dy)
        dx = torch.empty_like(x)
        daffine = None if affine is None else torch.empty_like(affine)
        c = context()
        call("effnet_norm_backward_ws", c, plan.ptr, x.data_ptr(), plan.x_len,
             dy.data_ptr(), plan.x_len, ptr(affine), plan.affine_len,
             ctx.saved.data_ptr(), plan.saved_len, dx.data_ptr(), plan.x_len,
             ptr(daffine), plan.affine_len, 0, *plan.workspace(c, 2))
        dw = db = None
        if daffine is not None:
            dw = daffine[0] if ctx.needs_input_grad[1] else None
            db = daffine[1] if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db, None, None, None


def _needs_grad(x, *params):
    return torch.is_grad_enabled() and (
        x.requires_grad or any(p is not None and p.requires_grad for p in params))


class _NormBase:
    """Plan cache and the inference call shared by the normalization modules."""

    def _norm_plan(self, x, kind, groups, eps, affine):
        n, c, h, w = x.shape
        key = (n, h, w)
        plan = self._plans.get(key)
        if plan is None:
            desc = D.new(D.NormDesc, batch=n, h=h, w=w, channels=c, groups=groups,
                         eps=eps, kind=kind, grouping=self._grouping,
                         activation=D.ACT[self.act], affine=int(affine))
            plan = self._plans[key] = _NormPlan(desc)
        return plan

    def _infer(self, x, plan, weight, bias, running):
        affine = _affine(weight, bias)
        y = torch.empty_like(x)
        c = context()
        call("effnet_norm_forward_infer_ws", c, plan.ptr, x.data_ptr(),
             plan.x_len, ptr(affine), plan.affine_len, ptr(running),
             0 if running is None else plan.running_len, y.data_ptr(), plan.x_len,
             *plan.workspace(c, 1))
        return y


class BatchNormAct2d(nn.BatchNorm2d, _NormBase):
    """``nn.BatchNorm2d`` followed by an activation (``act_layer``: ``None`` /
    ``"identity"``, ``"relu"``, ``"sigmoid"``, ``"swish"``, or ``nn.SiLU`` etc.),
    one fused effnet kernel. Same parameters and buffers as ``nn.BatchNorm2d`` (and
    timm's ``BatchNormAct2d``), same running-statistics update (``momentum``, or the
    cumulative average for ``momentum=None``). In eval mode it normalizes with the
    running statistics; if a gradient is needed there it falls back to PyTorch ops.
    """

    _grouping = D.GROUPING_CONTIGUOUS

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, act_layer=None, device=None, dtype=None):
        if dtype is not None and dtype != torch.float32:
            raise TypeError(f"effnet computes in torch.float32; got dtype={dtype}")
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         device, dtype)
        self.act = activation_name(act_layer)
        self._plans = Cache()

    def extra_repr(self):
        return super().extra_repr() + f", act={self.act}"

    def forward(self, x):
        """``act(batchnorm(x))`` (channels-last output)."""
        x = check_input(x, "BatchNormAct2d input", self.num_features)
        plan = self._norm_plan(x, D.NORM_BATCH, 0, self.eps, self.affine)
        use_batch = self.training or self.running_mean is None
        if not use_batch:
            if _needs_grad(x, self.weight, self.bias):
                y = F.batch_norm(x, self.running_mean, self.running_var, self.weight,
                                 self.bias, False, 0.0, self.eps)
                return nhwc(_TORCH_ACT[self.act](y))
            running = torch.stack([self.running_mean, self.running_var])
            return self._infer(x, plan, self.weight, self.bias, running)
        momentum = running = None
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                        else self.momentum)
            running = torch.stack([self.running_mean, self.running_var])
        y = _NormFunction.apply(x, self.weight, self.bias, plan, running, momentum)
        if running is not None:
            with torch.no_grad():
                self.running_mean.copy_(running[0])
                self.running_var.copy_(running[1])
        return y


class GroupNormAct2d(nn.Module, _NormBase):
    """``nn.GroupNorm`` followed by an activation, one fused effnet kernel. Parameters
    ``weight`` and ``bias`` as ``nn.GroupNorm`` (``bias=False``: gamma only, the
    γ-only LayerNorm of Proxy Norm networks). ``num_groups=1`` is LayerNorm over
    (C, H, W). ``grouping="strided"`` puts channel ``c`` in group ``c % groups``
    instead of PyTorch's contiguous blocks."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, act_layer=None,
                 bias=True, grouping="contiguous"):
        super().__init__()
        if num_groups < 1 or num_channels % num_groups:
            raise ValueError(f"num_groups ({num_groups}) must divide num_channels "
                             f"({num_channels})")
        if grouping not in ("contiguous", "strided"):
            raise ValueError(f"grouping must be 'contiguous' or 'strided', got "
                             f"{grouping!r}")
        self.num_groups, self.num_channels, self.eps = num_groups, num_channels, eps
        self.affine = affine
        self.act = activation_name(act_layer)
        self._grouping = (D.GROUPING_CONTIGUOUS if grouping == "contiguous"
                          else D.GROUPING_STRIDED)
        if affine:
            self.weight = nn.Parameter(torch.ones(num_channels))
            self.bias = nn.Parameter(torch.zeros(num_channels)) if bias else None
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self._plans = Cache()

    def extra_repr(self):
        return (f"{self.num_groups}, {self.num_channels}, eps={self.eps}, "
                f"affine={self.affine}, bias={self.bias is not None}, act={self.act}")

    def forward(self, x):
        """``act(groupnorm(x))`` (channels-last output)."""
        x = check_input(x, "GroupNormAct2d input", self.num_channels)
        plan = self._norm_plan(x, D.NORM_GROUP, self.num_groups, self.eps, self.affine)
        if _needs_grad(x, self.weight, self.bias):
            return _NormFunction.apply(x, self.weight, self.bias, plan, None, None)
        return self._infer(x, plan, self.weight, self.bias, None)


class _ProxyPlan:
    """A fused LayerNorm + Proxy Norm plan for one input shape."""

    def __init__(self, norm_desc, proxy_desc):
        self.handle = Handle("effnet_proxy_norm_plan_create",
                             "effnet_proxy_norm_plan_destroy", context(),
                             addressof(norm_desc), addressof(proxy_desc))
        self.ptr = self.handle.ptr
        shape = D.new(D.ProxyNormShape)
        call("effnet_proxy_norm_plan_shape", self.ptr, addressof(shape))
        self.x_len, self.params_len = shape.x_len, shape.params_len
        self.saved_len, self.scale_offset = shape.saved_len, shape.scale_offset
        self.channels = shape.channels
        self.ws_sizes = {}

    def workspace(self, ctx, pass_):
        """``(pointer, bytes)`` of a workspace for pass ``pass_`` (0 forward, 1
        backward)."""
        n = self.ws_sizes.get(pass_)
        if n is None:
            out = c_size_t()
            call("effnet_proxy_norm_workspace_size", ctx, self.ptr, pass_, self.x_len,
                 addressof(out))
            n = self.ws_sizes[pass_] = out.value
        return scratch(n)


class _ProxyFunction(torch.autograd.Function):
    """LayerNorm + Proxy Norm forward and backward; returns ``(z, s)``."""

    @staticmethod
    def forward(ctx, x, gamma, beta, proxy_beta, proxy_gamma, plan, delayed):
        params = torch.stack([gamma.detach(), beta.detach(), proxy_beta.detach(),
                              proxy_gamma.detach()])
        z = torch.empty_like(x)
        saved = torch.empty(plan.saved_len)
        c = context()
        call("effnet_proxy_norm_forward_ws", c, plan.ptr, x.data_ptr(),
             plan.x_len, params.data_ptr(), plan.params_len, z.data_ptr(), plan.x_len,
             saved.data_ptr(), plan.saved_len, *plan.workspace(c, 0))
        s = saved[plan.scale_offset:plan.scale_offset + plan.channels].clone()
        if not delayed:
            ctx.mark_non_differentiable(s)
        ctx.save_for_backward(x)
        ctx.params, ctx.saved, ctx.plan, ctx.delayed = params, saved, plan, delayed
        return z, s

    @staticmethod
    def backward(ctx, dz, ds):
        (x,) = ctx.saved_tensors
        plan, params = ctx.plan, ctx.params
        dz = nhwc(dz)
        ds = dense(ds) if ctx.delayed and ds is not None else None
        dx = torch.empty_like(x)
        dparams = torch.empty_like(params)
        c = context()
        call("effnet_proxy_norm_backward_ws", c, plan.ptr, x.data_ptr(),
             plan.x_len, dz.data_ptr(), plan.x_len, ptr(ds),
             0 if ds is None else plan.channels, params.data_ptr(), plan.params_len,
             ctx.saved.data_ptr(), plan.saved_len, dx.data_ptr(), plan.x_len,
             dparams.data_ptr(), plan.params_len, 0, *plan.workspace(c, 1))
        return dx, dparams[0], dparams[1], dparams[2], dparams[3], None, None


class LayerNormProxyAct2d(nn.Module):
    """LayerNorm (statistics per sample over C, H, W; no affine of its own) followed
    by a Proxy Norm activation (Labatie et al., 2021), one fused effnet kernel.

    Parameters per channel: ``weight`` (γ), ``bias`` (β), ``proxy_beta`` (β′),
    ``proxy_gamma`` (γ′), initially 1, 0, 0, 0. With ``u = γ·x̂ + β``, ``a = act(u)``
    and ``μ``, ``s`` the mean and inverse standard deviation (with ``eps_pn``) of the
    ``k`` proxy points, ``variant`` chooses the output: ``"full"`` ``(a − μ)·s``,
    ``"delayed"`` the pair ``(a − μ, s)`` (for a squeeze-excite gate to fold ``s``
    in), ``"none"`` ``a − μ``.
    """

    def __init__(self, num_channels, act_layer="swish", variant="full", k=200,
                 eps=1e-3, eps_pn=0.03):
        super().__init__()
        if variant not in D.PROXY_VARIANT:
            raise ValueError(f"variant must be 'full', 'delayed' or 'none', got "
                             f"{variant!r}")
        self.num_channels, self.variant, self.k = num_channels, variant, k
        self.eps, self.eps_pn = eps, eps_pn
        self.act = activation_name(act_layer)
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.proxy_beta = nn.Parameter(torch.zeros(num_channels))
        self.proxy_gamma = nn.Parameter(torch.zeros(num_channels))
        self._plans = Cache()

    def extra_repr(self):
        return (f"{self.num_channels}, act={self.act}, variant={self.variant}, "
                f"k={self.k}, eps={self.eps}, eps_pn={self.eps_pn}")

    def _plan(self, x):
        n, c, h, w = x.shape
        plan = self._plans.get((n, h, w))
        if plan is None:
            norm = D.new(D.NormDesc, batch=n, h=h, w=w, channels=c, groups=1,
                         eps=self.eps, kind=D.NORM_LAYER, affine=1)
            proxy = D.new(D.ProxyNormDesc, channels=c, k=self.k, eps_pn=self.eps_pn,
                          variant=D.PROXY_VARIANT[self.variant],
                          activation=D.ACT[self.act])
            plan = self._plans[(n, h, w)] = _ProxyPlan(norm, proxy)
        return plan

    def forward(self, x):
        """``z`` (``"full"``, ``"none"``) or ``(z, s)`` (``"delayed"``); ``z`` is
        channels-last, ``s`` has shape ``(C,)``."""
        x = check_input(x, "LayerNormProxyAct2d input", self.num_channels)
        delayed = self.variant == "delayed"
        z, s = _ProxyFunction.apply(x, self.weight, self.bias, self.proxy_beta,
                                    self.proxy_gamma, self._plan(x), delayed)
        return (z, s) if delayed else z
