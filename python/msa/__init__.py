"""msa: an out-of-core memory store with disk-backed sparse attention.

A thin ctypes wrapper over the C API (include/msa.h) of libmsa.so:

    import numpy as np, msa

    with msa.Store.create("mem", layers=1, kv_heads=2, head_dim=64) as store:
        doc = store.append_document("doc", keys, values)   # [layers, kv_heads, tokens, head_dim]
        store.commit()                                      # durable and visible
        out, lse = store.attend(0, q, top_k=16)             # q: [n, q_heads, head_dim] float32

The library is found through MSA_LIBRARY (a path), else next to this
package, else in the build/ folder of the source checkout this package
lives in. Errors raise msa.Error subclasses, one per msa_status_t code
(msa.InvalidArgument, msa.NotFound, ...), carrying the library's message.
"""

from . import _lib
from .errors import (AlreadyExists, Corruption, Error, Internal, InvalidArgument, IOError,
                     NotFound, NotSupported)
from .store import (Document, Geometry, Prefetch, Store, gpu_available, library_path, set_log_level,
                    version)

__version__ = "{}.{}.{}".format(*_lib.version)

__all__ = [
    "Store", "Prefetch", "Geometry", "Document", "version", "library_path", "set_log_level",
    "gpu_available",
    "Error", "InvalidArgument", "NotFound", "Corruption", "IOError", "NotSupported",
    "AlreadyExists", "Internal",
]
