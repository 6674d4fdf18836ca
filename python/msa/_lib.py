"""Loading libmsa.so and declaring the C API of include/msa.h to ctypes.

The structures below mirror msa.h field for field; python/tests checks their
sizes and offsets against include/msa.abi, which tools/check_abi.sh generates
from the header with the C compiler.
"""

import ctypes
import os
from pathlib import Path

# The header version this wrapper was written for (include/msa.h).
HEADER_MAJOR = 0
HEADER_MINOR = 8

_LIB_NAMES = ("libmsa.so", "libmsa.so.0")


class Geometry(ctypes.Structure):
    _fields_ = [
        ("layers", ctypes.c_uint32),
        ("kv_heads", ctypes.c_uint32),
        ("head_dim", ctypes.c_uint32),
        ("block_tokens", ctypes.c_uint32),
        ("codec", ctypes.c_int),  # msa_codec_t
        ("summary", ctypes.c_int),  # msa_summary_t
        ("summary_centroids", ctypes.c_uint32),
    ]


class AttendParams(ctypes.Structure):
    _fields_ = [
        ("top_k", ctypes.c_uint32),
        ("exact", ctypes.c_int),
        ("gqa_combine", ctypes.c_int),  # msa_gqa_combine_t
        ("nprobe", ctypes.c_uint32),
        ("candidates", ctypes.c_uint32),
        ("exact_routing", ctypes.c_int),
        ("channels", ctypes.c_uint32),
        ("gpu", ctypes.c_int),  # msa_gpu_t
        ("documents", ctypes.POINTER(ctypes.c_uint64)),
        ("n_documents", ctypes.c_uint32),
        ("document_sinks", ctypes.c_int),  # since 0.7
    ]


class Stats(ctypes.Structure):
    _fields_ = [
        ("documents", ctypes.c_uint64),
        ("tokens", ctypes.c_uint64),
        ("blocks_per_stream", ctypes.c_uint64),
        ("stored_bytes", ctypes.c_uint64),
        ("raw_bytes", ctypes.c_uint64),
        ("cache_capacity_bytes", ctypes.c_uint64),
        ("cache_used_bytes", ctypes.c_uint64),
        ("cache_hits", ctypes.c_uint64),
        ("cache_misses", ctypes.c_uint64),
    ]


class Document(ctypes.Structure):
    _fields_ = [
        ("id", ctypes.c_uint64),
        ("name", ctypes.c_char_p),
        ("tokens", ctypes.c_uint64),
        ("first_block", ctypes.c_uint64),
        ("blocks", ctypes.c_uint64),
    ]


class CompactStats(ctypes.Structure):
    _fields_ = [
        ("segments_removed", ctypes.c_uint64),
        ("bytes_reclaimed", ctypes.c_uint64),
        ("blocks_moved", ctypes.c_uint64),
        ("blocks_dropped", ctypes.c_uint64),
    ]


class FetchStats(ctypes.Structure):
    _fields_ = [
        ("cache_capacity_bytes", ctypes.c_uint64),
        ("cache_resident_bytes", ctypes.c_uint64),
        ("cache_entries", ctypes.c_uint64),
        ("cache_hits", ctypes.c_uint64),
        ("cache_misses", ctypes.c_uint64),
        ("cache_hit_bytes", ctypes.c_uint64),
        ("cache_evictions", ctypes.c_uint64),
        ("disk_blocks_read", ctypes.c_uint64),
        ("disk_bytes_read", ctypes.c_uint64),
        ("reader", ctypes.c_uint32),
        ("reserved32", ctypes.c_uint32),
        ("reserved", ctypes.c_uint64 * 6),
    ]


class OpenParams(ctypes.Structure):
    _fields_ = [
        ("read_only", ctypes.c_int),
        ("queue_depth", ctypes.c_uint32),
        ("cache_bytes", ctypes.c_uint64),
        ("gpu_pool_bytes", ctypes.c_uint64),
        ("allow_io_uring", ctypes.c_int),
        ("query_threads", ctypes.c_uint32),
        ("reserved", ctypes.c_uint64 * 4),
    ]


class LayerQueries(ctypes.Structure):
    _fields_ = [
        ("layer", ctypes.c_uint32),
        ("n", ctypes.c_uint32),
        ("q", ctypes.c_void_p),
    ]


# Struct name in msa.h -> ctypes mirror (the ABI test walks this).
STRUCTS = {
    "msa_geometry_t": Geometry,
    "msa_attend_params_t": AttendParams,
    "msa_stats_t": Stats,
    "msa_document_t": Document,
    "msa_compact_stats_t": CompactStats,
    "msa_fetch_stats_t": FetchStats,
    "msa_open_params_t": OpenParams,
    "msa_layer_queries_t": LayerQueries,
}


def candidate_paths():
    """Where the library is looked for, in order."""
    env = os.environ.get("MSA_LIBRARY")
    if env:
        return [Path(env)]
    here = Path(__file__).resolve().parent
    paths = [here / name for name in _LIB_NAMES]  # an installed copy next to the package
    repo = here.parent.parent  # python/msa -> the repository (a source checkout)
    paths += [repo / "build" / name for name in _LIB_NAMES]
    return paths


def _load():
    tried = []
    for path in candidate_paths():
        if path.exists():
            try:
                return ctypes.CDLL(str(path)), path
            except OSError as e:
                raise ImportError(f"msa: cannot load {path}: {e}") from e
        tried.append(str(path))
    raise ImportError(
        "msa: libmsa.so not found (tried " + ", ".join(tried) + "). Build it with "
        "`bash tools/setup.sh` (it lands in build/), or point MSA_LIBRARY at it.")


def _declare(lib):
    c = ctypes
    vp, u32, u64, i32 = c.c_void_p, c.c_uint32, c.c_uint64, c.c_int
    protos = {
        "msa_version": (u32, []),
        "msa_last_error": (c.c_char_p, []),
        "msa_set_log_level": (i32, [i32]),
        "msa_geometry_default_params": (Geometry, []),
        "msa_store_create": (i32, [c.c_char_p, c.POINTER(Geometry), c.POINTER(vp)]),
        "msa_store_open": (i32, [c.c_char_p, i32, c.POINTER(vp)]),
        "msa_store_close": (None, [vp]),
        "msa_store_geometry": (i32, [vp, c.POINTER(Geometry)]),
        "msa_append_document": (i32, [vp, c.c_char_p, vp, vp, u64, i32, c.POINTER(u64)]),
        "msa_commit": (i32, [vp]),
        "msa_list_documents": (i32, [vp, c.POINTER(c.POINTER(Document)), c.POINTER(c.c_size_t)]),
        "msa_documents_free": (None, [c.POINTER(Document)]),
        "msa_delete_document": (i32, [vp, c.c_uint64]),
        "msa_compact": (i32, [vp, c.POINTER(CompactStats)]),
        "msa_attend_default_params": (AttendParams, []),
        "msa_attend": (i32, [vp, u32, vp, u32, u32, c.POINTER(AttendParams), vp, vp]),
        "msa_prefetch": (i32, [vp, u32, vp, u32, u32, c.POINTER(AttendParams), c.POINTER(vp)]),
        "msa_prefetch_wait": (i32, [vp]),
        "msa_prefetch_free": (None, [vp]),
        "msa_store_stats": (i32, [vp, c.POINTER(Stats)]),
        "msa_attend_device": (i32, [vp, u32, vp, u32, u32, c.POINTER(AttendParams), vp, vp, vp]),
        "msa_gpu_available": (i32, [c.POINTER(c.c_char_p)]),
        "msa_store_fetch_stats": (i32, [vp, c.POINTER(FetchStats)]),
        "msa_open_default_params": (OpenParams, []),
        "msa_store_open_with": (i32, [c.c_char_p, c.POINTER(OpenParams), c.POINTER(vp)]),
        "msa_prefetch_layers": (i32, [vp, c.POINTER(LayerQueries), u32, u32, c.POINTER(AttendParams),
                                      c.POINTER(vp)]),
    }
    for name, (restype, argtypes) in protos.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes


def _check_version(lib, path):
    lib.msa_version.restype = ctypes.c_uint32
    lib.msa_version.argtypes = []
    v = lib.msa_version()
    major, minor, patch = v >> 16, (v >> 8) & 0xFF, v & 0xFF
    if major != HEADER_MAJOR or minor < HEADER_MINOR:
        raise ImportError(
            f"msa: {path} is version {major}.{minor}.{patch}; this wrapper needs "
            f"{HEADER_MAJOR}.{HEADER_MINOR} or a later {HEADER_MAJOR}.x (rebuild the library, "
            "or use the python/ of the same checkout)")
    return major, minor, patch


lib, path = _load()
version = _check_version(lib, path)  # before _declare: an old library may lack functions
_declare(lib)
