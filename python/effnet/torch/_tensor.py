"""Checks and layout helpers shared by the modules: effnet takes float32 CPU tensors
in NHWC memory, which PyTorch calls ``channels_last`` (logical shape NCHW)."""

import threading

import torch

CL = torch.channels_last


def check_input(x, name, channels=None, dim=4):
    """``x`` as a float32 CPU tensor in channels-last memory (zero-copy when it already
    is one; otherwise converted once). Raises ``TypeError`` for a non-tensor, another
    dtype or device, ``ValueError`` for a wrong rank or channel count."""
    check_tensor(x, name)
    if x.dim() != dim:
        raise ValueError(f"{name}: expected a {dim}-D tensor (N, C, H, W), got shape "
                         f"{tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name}: expected {channels} channels (dim 1), got "
                         f"{x.shape[1]} in shape {tuple(x.shape)}")
    return nhwc(x)


def check_tensor(x, name):
    """Raises ``TypeError`` unless ``x`` is a non-empty float32 CPU tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.device.type != "cpu":
        raise TypeError(f"{name}: effnet runs on the CPU; got a tensor on {x.device} "
                        "(move it with .cpu())")
    if x.dtype != torch.float32:
        raise TypeError(f"{name}: effnet takes torch.float32 tensors; got {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name}: empty tensor of shape {tuple(x.shape)}")


def nhwc(t):
    """``t`` (N, C, H, W) with NHWC memory: itself if it already is, else one copy."""
    if t.is_contiguous(memory_format=CL):
        return t
    return t.contiguous(memory_format=CL)


def empty_nhwc(n, c, h, w):
    """An uninitialized float32 (N, C, H, W) tensor with NHWC memory."""
    return torch.empty((n, c, h, w), dtype=torch.float32, memory_format=CL)


def dense(t):
    """``t`` as a C-contiguous float32 tensor (parameters, gradients of vectors)."""
    return t if t.is_contiguous() else t.contiguous()


def ptr(t):
    """The data pointer of ``t`` (``None`` for ``None``), for a ctypes ``void *``."""
    return None if t is None else t.data_ptr()


def activation_name(act):
    """effnet's name for an activation given as a name, an ``nn.Module`` class or
    instance (``nn.SiLU``, ``nn.ReLU``, ``nn.Sigmoid``, ``nn.Identity``) or ``None``."""
    if act is None:
        return "identity"
    if isinstance(act, str):
        name = {"silu": "swish", "none": "identity", "": "identity"}.get(act.lower(),
                                                                        act.lower())
        if name not in ("identity", "relu", "sigmoid", "swish"):
            raise ValueError(f"unknown activation {act!r}: expected identity, relu, "
                             "sigmoid or swish (silu)")
        return name
    cls = act if isinstance(act, type) else type(act)
    names = {"SiLU": "swish", "Swish": "swish", "ReLU": "relu", "Sigmoid": "sigmoid",
             "Identity": "identity"}
    for klass in cls.__mro__:
        if klass.__name__ in names:
            return names[klass.__name__]
    raise ValueError(f"activation {cls.__name__} has no effnet kernel (identity, relu, "
                     "sigmoid, swish)")


class _Scratch(threading.local):
    buf = None


_scratch = _Scratch()


def scratch(nbytes):
    """``(pointer, bytes)`` of this thread's scratch buffer, grown to at least
    ``nbytes``: the workspace of the ``_ws`` passes, shared by every plan (the calls
    of one thread never overlap). ``(None, 0)`` for a pass that needs none."""
    if nbytes == 0:
        return None, 0
    buf = _scratch.buf
    if buf is None or buf.numel() * 4 < nbytes:
        buf = _scratch.buf = torch.empty((nbytes + 3) // 4, dtype=torch.float32)
    return buf.data_ptr(), buf.numel() * 4
