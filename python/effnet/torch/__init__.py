"""PyTorch modules computed by effnet through its C ABI (float32, CPU, channels-last
memory): ``Conv2d``, ``BatchNormAct2d``, ``GroupNormAct2d``, ``LayerNormProxyAct2d``,
the activations, global average pooling and the squeeze-excite gate; the EfficientNet
builder ``efficientnet`` and ``swap_modules`` for existing timm networks."""

from .conv import Conv2d, tf_same_pads
from .norm import BatchNormAct2d, GroupNormAct2d, LayerNormProxyAct2d

__all__ = ["BatchNormAct2d", "Conv2d", "GroupNormAct2d", "LayerNormProxyAct2d",
           "tf_same_pads"]
