"""``efficientnet(arch)``: EfficientNets built from effnet's modules, with timm's
parameter names, so that timm state dicts and effnet checkpoints load directly.

Architectures (as effnet's own model layer names them): ``efficientnet_b0`` …
``efficientnet_b7`` (timm's: BatchNorm ε 1e-5, symmetric padding),
``tf_efficientnet_b0`` … (BatchNorm ε 1e-3, TensorFlow ``SAME`` padding), and the
paper's variants ``b<k>_<g1|g16>_<bn|gn|lnpn>`` (ε 1e-3; G16: 16 channels per group
in the spatial convolutions and expansion 4; ``gn``: GroupNorm with 4 groups;
``lnpn``: LayerNorm + Proxy Norm), with ``tiny`` in place of ``b<k>`` for a
quarter-width, quarter-depth network.
"""

import math
from pathlib import Path

import torch
from torch import nn

from .conv import Conv2d
from .norm import BatchNormAct2d, GroupNormAct2d, LayerNormProxyAct2d
from .ops import GlobalAvgPool2d, SqueezeExcite

# (width, depth, native resolution, dropout) per scale b0..b7, and "tiny".
_SCALING = [(1.0, 1.0, 224, 0.2), (1.0, 1.1, 240, 0.2), (1.1, 1.2, 260, 0.3),
            (1.2, 1.4, 300, 0.3), (1.4, 1.8, 380, 0.4), (1.6, 2.2, 456, 0.4),
            (1.8, 2.6, 528, 0.5), (2.0, 3.1, 600, 0.5)]
_TINY = (0.25, 0.25, 64, 0.2)
# (kernel, stride, expansion, out channels, repeats) of B0's seven stages.
_STAGES = [(3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
           (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1)]


def round_channels(c, width):
    """EfficientNet's channel rounding: to a multiple of 8, at least 8, never more
    than 10 % below ``c * width``."""
    scaled = c * width
    r = max(8, int(scaled + 4) // 8 * 8)
    return r + 8 if r < 0.9 * scaled else r


def g16_group_size(c):
    """Channels per group of a G16 spatial convolution over ``c`` channels."""
    groups = max(c // 16, 1)
    while c % groups:
        groups -= 1
    return c // groups


def parse_arch(arch):
    """The configuration of an architecture name, as a dict (see the module doc)."""
    def scale_of(s):
        if s == "tiny":
            return _TINY
        if s.startswith("b") and s[1:].isdigit() and int(s[1:]) < 8:
            return _SCALING[int(s[1:])]
        raise ValueError(f"unknown architecture {arch!r}: expected efficientnet_b<0-7>,"
                         " tf_efficientnet_b<0-7> or b<0-7>_<g1|g16>_<bn|gn|lnpn> "
                         "(or tiny in place of b<k>)")
    if arch.startswith("tf_efficientnet_"):
        scale, spatial, norm, eps, pad = scale_of(arch[16:]), "g1", "bn", 1e-3, "same"
    elif arch.startswith("efficientnet_"):
        scale, spatial, norm, eps, pad = scale_of(arch[13:]), "g1", "bn", 1e-5, "sym"
    else:
        parts = arch.split("_")
        if len(parts) != 3 or parts[1] not in ("g1", "g16") \
                or parts[2] not in ("bn", "gn", "lnpn"):
            scale_of("?")
        scale, spatial, norm, eps, pad = scale_of(parts[0]), parts[1], parts[2], \
            1e-3, "sym"
    width, depth, res, dropout = scale
    return dict(arch=arch, width=width, depth=depth, native_res=res, dropout=dropout,
                spatial=spatial, norm=norm, eps=eps, padding=pad)


def block_specs(cfg):
    """Every MBConv block of ``cfg`` as a dict (stage, channels, kernel, stride,
    group size, squeeze-excite width, skip)."""
    out, in_ch = [], round_channels(32, cfg["width"])
    for stage, (k, s, e, c, r) in enumerate(_STAGES):
        if cfg["spatial"] == "g16" and e > 1:
            e = 4
        out_ch = round_channels(c, cfg["width"])
        for index in range(math.ceil(cfg["depth"] * r)):
            stride = s if index == 0 else 1
            mid = in_ch * e
            out.append(dict(stage=stage, in_ch=in_ch, mid_ch=mid, out_ch=out_ch,
                            expand=e > 1, kernel=k, stride=stride,
                            group_size=1 if cfg["spatial"] == "g1"
                            else g16_group_size(mid),
                            se_ch=max(1, int(in_ch * 0.25)),
                            skip=stride == 1 and in_ch == out_ch))
            in_ch = out_ch
    return out


def make_norm(cfg, channels, place):
    """The norm + activation of ``cfg`` at ``place``: ``"full"`` (after the stem and
    expansions), ``"delayed"`` (after the spatial conv), ``"project"`` (after the
    projection, no activation) or ``"head"``."""
    act = None if place == "project" else "swish"
    if cfg["norm"] == "bn":
        return BatchNormAct2d(channels, eps=cfg["eps"], act_layer=act)
    if cfg["norm"] == "gn":
        return GroupNormAct2d(4, channels, eps=cfg["eps"], act_layer=act)
    if place == "project":
        return GroupNormAct2d(1, channels, eps=cfg["eps"], bias=False)
    variant = {"full": "full", "delayed": "delayed", "head": "none"}[place]
    return LayerNormProxyAct2d(channels, variant=variant, eps=cfg["eps"])


class DropPath(nn.Module):
    """Per-sample drop-connect of a residual branch (training only)."""

    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        """``x`` with whole samples zeroed with probability ``p``, rescaled."""
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty(x.shape[0], 1, 1, 1).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class MBConv(nn.Module):
    """An inverted-residual block (``conv_pw``/``bn1`` expansion, ``conv_dw``/``bn2``,
    ``se``, ``conv_pwl``/``bn3``) or, without expansion, timm's depthwise-separable
    block (``conv_dw``/``bn1``, ``se``, ``conv_pw``/``bn2``)."""

    def __init__(self, cfg, spec, drop_path=0.0):
        super().__init__()
        pad = "same" if cfg["padding"] == "same" else spec["kernel"] // 2
        mid, k = spec["mid_ch"], spec["kernel"]
        self.expand = spec["expand"]
        dw = Conv2d(mid, mid, k, spec["stride"], pad,
                    groups=mid // spec["group_size"], bias=False)
        se = SqueezeExcite(mid, spec["se_ch"])
        if self.expand:
            self.conv_pw = Conv2d(spec["in_ch"], mid, 1, bias=False)
            self.bn1 = make_norm(cfg, mid, "full")
            self.conv_dw, self.bn2, self.se = dw, make_norm(cfg, mid, "delayed"), se
            self.conv_pwl = Conv2d(mid, spec["out_ch"], 1, bias=False)
            self.bn3 = make_norm(cfg, spec["out_ch"], "project")
        else:
            self.conv_dw, self.bn1, self.se = dw, make_norm(cfg, mid, "delayed"), se
            self.conv_pw = Conv2d(mid, spec["out_ch"], 1, bias=False)
            self.bn2 = make_norm(cfg, spec["out_ch"], "project")
        self.has_skip = spec["skip"]
        self.drop_path = DropPath(drop_path) if self.has_skip else None

    def forward(self, x):
        """The block's output (channels-last)."""
        shortcut = x
        if self.expand:
            steps = [(self.conv_pw, self.bn1), (self.conv_dw, self.bn2),
                     (self.conv_pwl, self.bn3)]
        else:
            steps = [(self.conv_dw, self.bn1), (self.conv_pw, self.bn2)]
        for i, (conv, norm) in enumerate(steps):
            x = norm(conv(x))
            if conv is self.conv_dw:
                x = self.se(*x) if isinstance(x, tuple) else self.se(x)
        if self.has_skip:
            x = self.drop_path(x) + shortcut
        return x


class EfficientNet(nn.Module):
    """An EfficientNet of effnet modules under timm's names (``conv_stem``, ``bn1``,
    ``blocks.{i}.{j}.*``, ``conv_head``, ``bn2``, ``classifier``)."""

    def __init__(self, arch, num_classes=1000, drop_rate=None, drop_path_rate=0.0):
        super().__init__()
        cfg = self.cfg = parse_arch(arch)
        stem = round_channels(32, cfg["width"])
        head = round_channels(1280, cfg["width"])
        self.conv_stem = Conv2d(3, stem, 3, 2, "same" if cfg["padding"] == "same"
                                else 1, bias=False)
        self.bn1 = make_norm(cfg, stem, "full")
        specs = block_specs(cfg)
        stages = [[] for _ in _STAGES]
        for i, spec in enumerate(specs):
            stages[spec["stage"]].append(
                MBConv(cfg, spec, drop_path_rate * i / len(specs)))
        self.blocks = nn.Sequential(*[nn.Sequential(*s) for s in stages])
        self.conv_head = Conv2d(specs[-1]["out_ch"], head, 1, bias=False)
        self.bn2 = make_norm(cfg, head, "head")
        self.global_pool = GlobalAvgPool2d(flatten=True)
        self.dropout = nn.Dropout(cfg["dropout"] if drop_rate is None else drop_rate)
        self.classifier = nn.Linear(head, num_classes)

    def forward_features(self, x):
        """The head's activations, (N, head channels, H/32, W/32)."""
        x = self.bn1(self.conv_stem(x))
        x = self.blocks(x)
        return self.bn2(self.conv_head(x))

    def forward(self, x):
        """Logits, (N, classes), for images (N, 3, H, W) (float32, CPU)."""
        return self.classifier(self.dropout(self.global_pool(self.forward_features(x))))


def load_weights(path_or_dict, ema=False):
    """A state dict in timm's names and layouts from a dict, a ``.pth``/``.pt`` file,
    a timm safetensors state dict, or an effnet checkpoint (safetensors with
    ``format = effnet-checkpoint``, whose effnet layouts are converted here; its
    optimizer state ``optim.*`` is dropped, and ``ema=True`` takes the EMA weights
    ``ema.*`` instead of the trained ones)."""
    if isinstance(path_or_dict, dict):
        return path_or_dict
    path = Path(path_or_dict)
    if path.suffix != ".safetensors":
        return torch.load(path, map_location="cpu", weights_only=True)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("format") != "effnet-checkpoint":
        return tensors
    out = {}
    for name, t in tensors.items():
        if name.startswith("optim.") or name.startswith("ema.") != ema:
            continue
        name = name[4:] if ema else name
        if t.dim() == 4:  # [kh][kw][C_in/groups][C_out] -> OIHW
            t = t.permute(3, 2, 0, 1)
        elif name == "classifier.weight":  # [in][out] -> [out][in]
            t = t.t()
        out[name] = t.contiguous()
    return out


def efficientnet(arch, pretrained=None, num_classes=None, drop_rate=None,
                 drop_path_rate=0.0, ema=False):
    """An :class:`EfficientNet` of architecture ``arch``; ``pretrained`` (a state
    dict, a timm ``.pth``/safetensors file or an effnet checkpoint) loads its weights
    (strictly; the class count is taken from it unless ``num_classes`` is given;
    ``ema`` as in :func:`load_weights`). ``drop_rate`` overrides the architecture's
    dropout, ``drop_path_rate`` is timm's drop-connect rate (0 by default)."""
    state = None if pretrained is None else load_weights(pretrained, ema)
    if num_classes is None:
        num_classes = 1000 if state is None or "classifier.bias" not in state \
            else state["classifier.bias"].numel()
    model = EfficientNet(arch, num_classes, drop_rate, drop_path_rate)
    if state is not None:
        model.load_state_dict(state, strict=True)
    return model
