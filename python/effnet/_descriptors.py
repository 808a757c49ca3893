"""ctypes mirrors of the descriptor and shape structs of ``include/effnet.h``.

Field order and types follow the header exactly; every struct starts with
``struct_size``, which :func:`new` fills in.
"""

import ctypes as C

_I64 = C.c_int64
_U32 = C.c_uint32
_SZ = C.c_size_t


class ConvDesc(C.Structure):
    """``effnet_conv_desc``: a convolution over NHWC tensors."""

    _fields_ = [("struct_size", _SZ)] + [
        (name, _I64)
        for name in (
            "batch", "in_h", "in_w", "in_channels", "out_channels", "group_size",
            "kernel_h", "kernel_w", "stride_h", "stride_w", "dilation_h", "dilation_w",
            "pad_top", "pad_bottom", "pad_left", "pad_right",
        )
    ] + [("dtype", _U32), ("reserved", _U32)]


class ConvShape(C.Structure):
    """``effnet_conv_shape``: what a convolution plan reports."""

    _fields_ = [
        ("struct_size", _SZ), ("out_h", _I64), ("out_w", _I64), ("groups", _I64),
        ("x_len", _SZ), ("y_len", _SZ), ("w_len", _SZ), ("bias_len", _SZ),
        ("family", _U32), ("reserved", _U32),
    ]


class NormDesc(C.Structure):
    """``effnet_norm_desc``: BatchNorm / GroupNorm / LayerNorm with a fused activation."""

    _fields_ = [
        ("struct_size", _SZ), ("batch", _I64), ("h", _I64), ("w", _I64),
        ("channels", _I64), ("groups", _I64), ("eps", C.c_float), ("kind", _U32),
        ("grouping", _U32), ("activation", _U32), ("affine", _U32), ("reserved", _U32),
    ]


class NormShape(C.Structure):
    """``effnet_norm_shape``: the element counts of a normalization plan's buffers."""

    _fields_ = [
        ("struct_size", _SZ), ("x_len", _SZ), ("affine_len", _SZ), ("sets", _SZ),
        ("saved_len", _SZ), ("running_len", _SZ),
    ]


class Nhwc(C.Structure):
    """``effnet_nhwc``: the shape of an activation for pooling and the SE gate."""

    _fields_ = [
        ("struct_size", _SZ), ("batch", _I64), ("height", _I64), ("width", _I64),
        ("channels", _I64),
    ]


class ProxyNormDesc(C.Structure):
    """``effnet_proxy_norm_desc``: a Proxy Norm activation."""

    _fields_ = [
        ("struct_size", _SZ), ("channels", _I64), ("k", _I64), ("eps_pn", C.c_float),
        ("variant", _U32), ("activation", _U32), ("reserved", _U32),
    ]


class ProxyNormShape(C.Structure):
    """``effnet_proxy_norm_shape``: buffer sizes and offsets into ``saved``."""

    _fields_ = [
        ("struct_size", _SZ), ("x_len", _SZ), ("channels", _SZ), ("params_len", _SZ),
        ("saved_len", _SZ), ("proxy_offset", _SZ), ("scale_offset", _SZ),
    ]


def new(struct_type, **fields):
    """An instance of ``struct_type`` with ``struct_size`` set and ``fields`` assigned."""
    s = struct_type(**fields)
    s.struct_size = C.sizeof(struct_type)
    return s


# Enum values of effnet.h.
ACT = {"identity": 0, "relu": 1, "sigmoid": 2, "swish": 3}
NORM_BATCH, NORM_GROUP, NORM_LAYER = 0, 1, 2
GROUPING_CONTIGUOUS, GROUPING_STRIDED = 0, 1
PROXY_VARIANT = {"full": 0, "delayed": 1, "none": 2}
