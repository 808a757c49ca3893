"""PyTorch modules computed by effnet through its C ABI (float32, CPU, channels-last
memory): ``Conv2d``, ``BatchNormAct2d``, ``GroupNormAct2d``, ``LayerNormProxyAct2d``,
the activations, global average pooling and the squeeze-excite gate; the EfficientNet
builder ``efficientnet`` and ``swap_modules`` for existing timm networks."""

from .conv import Conv2d, tf_same_pads
from .model import EfficientNet, efficientnet
from .norm import BatchNormAct2d, GroupNormAct2d, LayerNormProxyAct2d
from .ops import (Activation, GlobalAvgPool2d, ReLU, Sigmoid, SiLU, SqueezeExcite,
                  activation, global_avg_pool, se_gate)
from .swap import swap_modules

__all__ = ["Activation", "BatchNormAct2d", "Conv2d", "EfficientNet", "GlobalAvgPool2d",
           "GroupNormAct2d", "LayerNormProxyAct2d", "ReLU", "SiLU", "Sigmoid",
           "SqueezeExcite", "activation", "efficientnet", "global_avg_pool", "se_gate",
           "swap_modules", "tf_same_pads"]
