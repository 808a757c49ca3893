"""Loading ``libeffnet``, the C ABI's function signatures, errors and contexts.

The shared library ships inside the package (``effnet/_native/``), put there by the
build step of ``pip install ./python``; ``EFFNET_LIB`` may name another copy.
Every call goes through :func:`call`, which turns a status other than ``EFFNET_OK``
into an :class:`EffnetError` carrying the status name and ``effnet_last_error()``.
"""

import atexit
import ctypes as C
import os
import sys
import threading
from pathlib import Path

STATUS_NAMES = {
    0: "EFFNET_OK",
    1: "EFFNET_INVALID_ARGUMENT",
    2: "EFFNET_UNSUPPORTED",
    3: "EFFNET_OUT_OF_MEMORY",
    4: "EFFNET_INTERNAL",
    5: "EFFNET_IO_ERROR",
}

#: The ABI version this package was written against (``EFFNET_ABI_VERSION``).
ABI_VERSION = 1


class EffnetError(RuntimeError):
    """An effnet call failed: ``status`` is the status name (e.g.
    ``"EFFNET_INVALID_ARGUMENT"``), ``message`` the library's own message."""

    def __init__(self, function, status, message):
        self.function = function
        self.status = STATUS_NAMES.get(status, f"effnet status {status}")
        self.message = message
        super().__init__(f"{function}: {self.status}: {message}")


# Argument codes: p pointer, z size_t, u uint32, i int32, f float.
_SIGS = {
    "effnet_context_create": "up",
    "effnet_context_destroy": "p",
    "effnet_conv_plan_create": "ppp",
    "effnet_conv_plan_destroy": "p",
    "effnet_conv_plan_shape": "pp",
    "effnet_conv_forward": "pppzpzpzpz",
    "effnet_conv_backward_data": "pppzpzpz",
    "effnet_conv_backward_weight": "pppzpzpzpzi",
    "effnet_conv_workspace_size": "ppup",
    "effnet_conv_forward_ws": "pppzpzpzpzpz",
    "effnet_conv_backward_data_ws": "pppzpzpzpz",
    "effnet_conv_backward_weight_ws": "pppzpzpzpzipz",
    "effnet_conv_packed_weights_size": "pp",
    "effnet_conv_pack_weights": "pppzpz",
    "effnet_conv_forward_packed": "pppzpzpzpzpz",
    "effnet_norm_plan_create": "ppp",
    "effnet_norm_plan_destroy": "p",
    "effnet_norm_plan_shape": "pp",
    "effnet_norm_forward": "pppzpzpzpz",
    "effnet_norm_forward_infer": "pppzpzpzpz",
    "effnet_norm_update_running": "pppzpzf",
    "effnet_norm_backward": "pppzpzpzpzpzpzi",
    "effnet_norm_workspace_size": "ppup",
    "effnet_norm_forward_ws": "pppzpzpzpzpz",
    "effnet_norm_forward_infer_ws": "pppzpzpzpzpz",
    "effnet_norm_backward_ws": "pppzpzpzpzpzpzipz",
    "effnet_activation_forward": "puppz",
    "effnet_activation_backward": "pupppz",
    "effnet_global_avg_pool_forward": "pppzpz",
    "effnet_global_avg_pool_backward": "pppzpzi",
    "effnet_gate_forward": "pppzpzpz",
    "effnet_gate_backward": "pppzpzpzpzpz",
    "effnet_proxy_norm_plan_create": "pppp",
    "effnet_proxy_norm_plan_destroy": "p",
    "effnet_proxy_norm_plan_shape": "pp",
    "effnet_proxy_norm_forward": "pppzpzpzpz",
    "effnet_proxy_norm_backward": "pppzpzpzpzpzpzpzi",
    "effnet_proxy_norm_workspace_size": "ppuzp",
    "effnet_proxy_norm_forward_ws": "pppzpzpzpzpz",
    "effnet_proxy_norm_backward_ws": "pppzpzpzpzpzpzpzipz",
}
_CODES = {"p": C.c_void_p, "z": C.c_size_t, "u": C.c_uint32, "i": C.c_int32,
          "f": C.c_float}


def library_path():
    """The path of the shared library this package loads."""
    env = os.environ.get("EFFNET_LIB")
    if env:
        return Path(env)
    name = {"darwin": "libeffnet.dylib", "win32": "effnet.dll"}.get(sys.platform,
                                                                    "libeffnet.so")
    return Path(__file__).resolve().parent / "_native" / name


def _load():
    path = library_path()
    if not path.exists():
        raise ImportError(
            f"effnet's shared library is missing at {path}: install the package with "
            "`pip install ./python` from the repository root (it builds the library "
            "with cargo), or set EFFNET_LIB to a libeffnet built by "
            "`cargo build --release -p effnet-ffi`")
    lib = C.CDLL(str(path))
    lib.effnet_abi_version.restype = C.c_uint32
    lib.effnet_abi_version.argtypes = []
    lib.effnet_last_error.restype = C.c_char_p
    lib.effnet_last_error.argtypes = []
    for name, codes in _SIGS.items():
        fn = getattr(lib, name)
        fn.argtypes = [_CODES[c] for c in codes]
        fn.restype = C.c_int
    version = lib.effnet_abi_version()
    if version != ABI_VERSION:
        raise ImportError(f"{path} has ABI version {version}; this package needs "
                          f"{ABI_VERSION} (reinstall with `pip install ./python`)")
    return lib


lib = _load()


def call(name, *args):
    """Calls the C function ``name``; raises :class:`EffnetError` if it fails."""
    status = getattr(lib, name)(*args)
    if status != 0:
        message = lib.effnet_last_error().decode("utf-8", "replace")
        raise EffnetError(name, status, message)


class Handle:
    """Owns one C handle (a plan or a context) and destroys it exactly once, at
    :meth:`close` or when garbage-collected (also safe at interpreter exit)."""

    __slots__ = ("ptr", "_destroy")

    def __init__(self, create, destroy, *args):
        out = C.c_void_p()
        call(create, *args, C.addressof(out))
        self.ptr = out.value
        self._destroy = destroy

    def close(self):
        """Destroys the handle now (idempotent)."""
        ptr, self.ptr = self.ptr, None
        if ptr is not None and lib is not None:
            getattr(lib, self._destroy)(ptr)

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may be gone
            pass


_threads = None
_contexts = {}
_contexts_lock = threading.Lock()


def set_num_threads(threads):
    """Fixes the number of worker threads of effnet's calls; ``None`` (the default)
    follows ``torch.get_num_threads()`` (or one per CPU without torch)."""
    global _threads
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    _threads = threads


def get_num_threads():
    """The number of worker threads effnet's next call runs on."""
    if _threads is not None:
        return _threads
    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.get_num_threads()
    return os.cpu_count() or 1


def context():
    """The context (pointer) for the current thread count, created on first use."""
    n = get_num_threads()
    ctx = _contexts.get(n)
    if ctx is None:
        with _contexts_lock:
            ctx = _contexts.get(n)
            if ctx is None:
                ctx = Handle("effnet_context_create", "effnet_context_destroy", n)
                _contexts[n] = ctx
    return ctx.ptr


@atexit.register
def _close_contexts():
    for ctx in list(_contexts.values()):
        ctx.close()
    _contexts.clear()
