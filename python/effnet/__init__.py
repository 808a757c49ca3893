"""effnet for Python: EfficientNet kernels (grouped, depthwise and pointwise
convolutions, fused norms and Proxy Norm) through effnet's C ABI.

``effnet.torch`` holds the PyTorch modules; this top level holds what does not need
torch: the error type, the thread setting and the library's ABI version.
"""

from ._lib import EffnetError, get_num_threads, lib, library_path, set_num_threads

__all__ = ["EffnetError", "abi_version", "get_num_threads", "library_path",
           "set_num_threads"]
__version__ = "0.1.0"


def abi_version():
    """The ABI version of the loaded library (``effnet_abi_version()``)."""
    return lib.effnet_abi_version()
