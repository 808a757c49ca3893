#!/usr/bin/env python3
"""Call effnet's C ABI from Python with ctypes, on NumPy arrays.

Build the library first, then run this script from the repository root:

    cargo build --release -p effnet-ffi
    python3 examples/ctypes_conv.py            # or: EFFNET_LIB=/path/to/libeffnet.so

It runs a G16 convolution (3x3, 32 -> 32 channels in 2 groups of 16) forward,
backward-data and backward-weight, and checks each pass against a direct NumPy
computation. Tensors are NHWC float32; the weight is [kh][kw][C_in/groups][C_out]
(PyTorch's OIHW weight W is W.transpose(2, 3, 1, 0)).

For PyTorch, the `effnet` package in python/ (`pip install ./python`) wraps the same
calls as modules with autograd (`effnet.torch.Conv2d`, ...); this script stays as the
minimal, NumPy-only illustration of the C ABI.
"""

import ctypes as C
import os
import sys
from pathlib import Path

import numpy as np

EFFNET_OK = 0
STATUS_NAMES = {
    0: "EFFNET_OK",
    1: "EFFNET_INVALID_ARGUMENT",
    2: "EFFNET_UNSUPPORTED",
    3: "EFFNET_OUT_OF_MEMORY",
    4: "EFFNET_INTERNAL",
}


class ConvDesc(C.Structure):
    """`effnet_conv_desc` from include/effnet.h (same field order and types)."""

    _fields_ = [("struct_size", C.c_size_t)] + [
        (name, C.c_int64)
        for name in (
            "batch", "in_h", "in_w", "in_channels", "out_channels", "group_size",
            "kernel_h", "kernel_w", "stride_h", "stride_w", "dilation_h", "dilation_w",
            "pad_top", "pad_bottom", "pad_left", "pad_right",
        )
    ] + [("dtype", C.c_uint32), ("reserved", C.c_uint32)]


class ConvShape(C.Structure):
    """`effnet_conv_shape` from include/effnet.h."""

    _fields_ = [
        ("struct_size", C.c_size_t),
        ("out_h", C.c_int64),
        ("out_w", C.c_int64),
        ("groups", C.c_int64),
        ("x_len", C.c_size_t),
        ("y_len", C.c_size_t),
        ("w_len", C.c_size_t),
        ("bias_len", C.c_size_t),
        ("family", C.c_uint32),
        ("reserved", C.c_uint32),
    ]


def load_library():
    path = os.environ.get("EFFNET_LIB")
    if path is None:
        root = Path(__file__).resolve().parent.parent
        target = Path(os.environ.get("CARGO_TARGET_DIR", root / "target"))
        path = target / "release" / "libeffnet.so"
    lib = C.CDLL(str(path))
    F = C.POINTER(C.c_float)
    ptr = C.c_void_p
    lib.effnet_abi_version.restype = C.c_uint32
    lib.effnet_last_error.restype = C.c_char_p
    sigs = {
        "effnet_context_create": [C.c_uint32, C.POINTER(ptr)],
        "effnet_context_destroy": [ptr],
        "effnet_conv_plan_create": [ptr, C.POINTER(ConvDesc), C.POINTER(ptr)],
        "effnet_conv_plan_destroy": [ptr],
        "effnet_conv_plan_shape": [ptr, C.POINTER(ConvShape)],
        "effnet_conv_forward": [ptr, ptr, F, C.c_size_t, F, C.c_size_t, F, C.c_size_t,
                                F, C.c_size_t],
        "effnet_conv_backward_data": [ptr, ptr, F, C.c_size_t, F, C.c_size_t, F,
                                      C.c_size_t],
        "effnet_conv_backward_weight": [ptr, ptr, F, C.c_size_t, F, C.c_size_t, F,
                                        C.c_size_t, F, C.c_size_t, C.c_int32],
    }
    for name, args in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = C.c_int  # effnet_status, a C enum
    return lib


class EffnetError(RuntimeError):
    pass


def call(lib, name, *args):
    status = getattr(lib, name)(*args)
    if status != EFFNET_OK:
        message = lib.effnet_last_error().decode("utf-8", "replace")
        raise EffnetError(f"{STATUS_NAMES.get(status, status)}: {message}")


def buf(a):
    """(pointer, element count) of a C-contiguous float32 array, as the ABI takes."""
    assert a.dtype == np.float32 and a.flags["C_CONTIGUOUS"]
    return a.ctypes.data_as(C.POINTER(C.c_float)), a.size


def reference_forward(x, w, bias, stride, pads, group_size):
    """Direct NHWC grouped convolution in float64 (for checking only)."""
    n, h, wd, cin = x.shape
    kh, kw, gs, cout = w.shape
    pt, pb, pl, pr = pads
    xp = np.pad(x.astype(np.float64), ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    oh = (h + pt + pb - kh) // stride + 1
    ow = (wd + pl + pr - kw) // stride + 1
    groups = cin // group_size
    cog = cout // groups
    y = np.zeros((n, oh, ow, cout))
    for g in range(groups):
        xs = xp[..., g * gs:(g + 1) * gs]
        ws = w[..., g * cog:(g + 1) * cog].astype(np.float64)
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, i:i + stride * oh:stride, j:j + stride * ow:stride, :]
                y[..., g * cog:(g + 1) * cog] += patch @ ws[i, j]
    return y + bias


def main():
    lib = load_library()
    print("effnet ABI version", lib.effnet_abi_version())
    rng = np.random.default_rng(0)
    n, h, w_, cin, cout, gs, k, stride = 2, 9, 8, 32, 32, 16, 3, 2
    pads = (1, 1, 1, 1)
    desc = ConvDesc(struct_size=C.sizeof(ConvDesc), batch=n, in_h=h, in_w=w_,
                    in_channels=cin, out_channels=cout, group_size=gs, kernel_h=k,
                    kernel_w=k, stride_h=stride, stride_w=stride, dilation_h=1,
                    dilation_w=1, pad_top=pads[0], pad_bottom=pads[1],
                    pad_left=pads[2], pad_right=pads[3], dtype=0)

    ctx, plan = C.c_void_p(), C.c_void_p()
    call(lib, "effnet_context_create", 2, C.byref(ctx))
    try:
        call(lib, "effnet_conv_plan_create", ctx, C.byref(desc), C.byref(plan))
        shape = ConvShape(struct_size=C.sizeof(ConvShape))
        call(lib, "effnet_conv_plan_shape", plan, C.byref(shape))
        oh, ow = shape.out_h, shape.out_w
        print(f"G16 conv: x {n}x{h}x{w_}x{cin} -> y {n}x{oh}x{ow}x{cout}, "
              f"{shape.groups} groups")

        x = rng.standard_normal((n, h, w_, cin), dtype=np.float32)
        w = rng.standard_normal((k, k, gs, cout), dtype=np.float32) * 0.1
        b = rng.standard_normal(cout, dtype=np.float32)
        y = np.empty((n, oh, ow, cout), np.float32)
        call(lib, "effnet_conv_forward", ctx, plan, *buf(x), *buf(w), *buf(b), *buf(y))
        want = reference_forward(x, w, b, stride, pads, gs)
        err = np.linalg.norm(y - want) / np.linalg.norm(want)
        print(f"forward          relative error {err:.2e}")

        # Gradients of L = <dy, y>: checked through the adjoint identities
        # <dy, conv(x)> = <conv_bwd_data(dy), x> = <conv_bwd_weight(x, dy), w>.
        dy = rng.standard_normal(y.shape, dtype=np.float32)
        dx = np.empty_like(x)
        call(lib, "effnet_conv_backward_data", ctx, plan, *buf(dy), *buf(w), *buf(dx))
        dw = np.empty_like(w)
        db = np.empty_like(b)
        call(lib, "effnet_conv_backward_weight", ctx, plan, *buf(x), *buf(dy), *buf(dw),
             *buf(db), 0)
        lhs = np.vdot(dy.astype(np.float64), want - b)
        err_dx = abs(np.vdot(dx.astype(np.float64), x) - lhs) / abs(lhs)
        err_dw = abs(np.vdot(dw.astype(np.float64), w) - lhs) / abs(lhs)
        err_db = np.linalg.norm(db - dy.sum(axis=(0, 1, 2))) / np.linalg.norm(db)
        print(f"backward-data    adjoint error  {err_dx:.2e}")
        print(f"backward-weight  adjoint error  {err_dw:.2e}, bias error {err_db:.2e}")

        # Bad input is an error with a message, not a crash.
        try:
            call(lib, "effnet_conv_forward", ctx, plan, *buf(x), *buf(w), None, 0,
                 y.ctypes.data_as(C.POINTER(C.c_float)), y.size - 1)
        except EffnetError as e:
            print("wrong count rejected:", e)
        ok = max(err, err_dx, err_dw, err_db) < 1e-5
    finally:
        call(lib, "effnet_conv_plan_destroy", plan)
        call(lib, "effnet_context_destroy", ctx)
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
