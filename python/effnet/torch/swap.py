"""``swap_modules``: replace, in place, the convolutions and norms of an existing
network (e.g. a timm EfficientNet) by effnet's modules, sharing their parameters."""

from torch import nn

from ._tensor import activation_name
from .conv import Conv2d
from .norm import BatchNormAct2d, GroupNormAct2d


def _conv(m):
    # Exactly nn.Conv2d or timm's Conv2dSame: other subclasses compute other things.
    if type(m) is not nn.Conv2d and type(m).__name__ != "Conv2dSame":
        return None
    if m.padding_mode != "zeros" or m.weight.device.type != "cpu":
        return None
    # timm's Conv2dSame pads dynamically as TensorFlow's SAME does.
    padding = "same" if type(m).__name__ == "Conv2dSame" else m.padding
    new = Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, padding,
                 m.dilation, m.groups, m.bias is not None)
    new.weight = m.weight
    new.bias = m.bias
    return new


def _act_of(m):
    """effnet's name for the activation of a timm ``*NormAct2d`` (``None`` if it has
    one effnet cannot fuse)."""
    act = getattr(m, "act", None)
    drop = getattr(m, "drop", None)
    if drop is not None and not isinstance(drop, nn.Identity):
        return None
    try:
        return activation_name(act)
    except ValueError:
        return None


def _batch_norm(m):
    if isinstance(m, BatchNormAct2d) or not isinstance(m, nn.BatchNorm2d):
        return None
    act = _act_of(m)
    if act is None:
        return None
    new = BatchNormAct2d(m.num_features, m.eps, m.momentum, m.affine,
                         m.track_running_stats, act_layer=act)
    new.weight, new.bias = m.weight, m.bias
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        new._buffers[name] = m._buffers.get(name)
    new.train(m.training)
    return new


def _group_norm(m):
    if not isinstance(m, nn.GroupNorm):
        return None
    act = _act_of(m)
    if act is None:
        return None
    new = GroupNormAct2d(m.num_groups, m.num_channels, m.eps, m.affine, act_layer=act)
    if m.affine:
        new.weight, new.bias = m.weight, m.bias
    return new


def swap_modules(model):
    """Replaces every ``nn.Conv2d`` (and timm's ``Conv2dSame``), ``nn.BatchNorm2d``
    (and timm's ``BatchNormAct2d`` with an identity, ReLU, sigmoid or SiLU
    activation) and ``nn.GroupNorm`` (and ``GroupNormAct``) of ``model`` by effnet's
    modules, in place, sharing the same parameter and buffer objects (an optimizer
    made before keeps working). Returns ``model``; ``model.effnet_swapped`` counts
    the replaced modules. Modules effnet cannot run (other padding modes,
    activations or devices) are left as they are."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = _conv(child) or _batch_norm(child) or _group_norm(child)
            if new is not None:
                setattr(parent, name, new)
                count += 1
    model.effnet_swapped = count
    return model
