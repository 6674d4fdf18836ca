"""msa.Store: the C API's store handle, with numpy (and torch CPU) arrays.

Arrays go to the library without a copy when they already have the layout
it reads: C order, aligned, and the dtype of the argument (float32, or
float16 or bfloat16 for keys and values; bfloat16 as torch tensors, whose
bits go as uint16). Anything else is converted once, with a copy.
Outputs are allocated here, or written in place into `out=` / `lse=` arrays
that must already have the exact shape, dtype and layout (a converted copy
would silently drop the result).

Thread safety follows the C API: one Store may be used from several threads
(ctypes releases the GIL during each call, so queries run in parallel);
close() must not run while another call on the store is in flight.
"""

import ctypes
import os
import sys
from collections import namedtuple

import numpy as np

from . import _lib
from .errors import InvalidArgument, NotSupported, from_status

_c = _lib.lib

CODECS = {"f16": 1, "bf16": 2, "int8": 3, "int4": 4}
SUMMARIES = {"mean": 1, "bound": 2, "centroids": 3, "hybrid": 4}
GQA_COMBINE = {"max": 0, "sum": 1}
GPU_MODES = {"auto": 0, "off": 1, "require": 2}  # msa_gpu_t: where attend computes
LOG_LEVELS = {"trace": 0, "debug": 1, "info": 2, "warn": 3, "warning": 3, "error": 4, "off": 6}
_DTYPE_CODES = {np.dtype(np.float32): 0, np.dtype(np.float16): 1}  # msa_dtype_t
_BFLOAT16 = 2  # MSA_BFLOAT16: uint16 arrays of bfloat16 bits (numpy has no bfloat16)

Geometry = namedtuple(
    "Geometry", "layers kv_heads head_dim block_tokens codec summary summary_centroids")
Geometry.__doc__ = """A store's fixed shape. codec and summary are names ('f16', 'hybrid', ...),
or the number where this wrapper has no name for it."""

Document = namedtuple("Document", "id name tokens first_block blocks")
Document.__doc__ = "A committed document: its id, name, token count and block range."


def _check(status):
    if status != 0:
        message = _c.msa_last_error().decode("utf-8", "replace")
        raise from_status(status, message)


def _name_of(table, value):
    for name, v in table.items():
        if v == value:
            return name
    return value


def _code_of(table, value, what):
    if value is None:
        return 0  # the library's default
    if isinstance(value, str):
        try:
            return table[value.lower()]
        except KeyError:
            raise InvalidArgument(
                f"{what} {value!r} is unknown (one of {', '.join(sorted(table))})") from None
    return int(value)


def version():
    """The loaded library's version, (major, minor, patch)."""
    return _lib.version


def library_path():
    """The path of the loaded libmsa.so."""
    return str(_lib.path)


def gpu_available():
    """(True, "") when the library was built with CUDA and a device is usable,
    else (False, why)."""
    why = ctypes.c_char_p()
    ok = _c.msa_gpu_available(ctypes.byref(why))
    return bool(ok), (why.value or b"").decode()


def set_log_level(level):
    """Sets the library's log level: 'trace', 'debug', 'info', 'warn', 'error', 'off'
    (or the msa_log_level_t number). The default is 'warn' (MSA_LOG_LEVEL overrides)."""
    _check(_c.msa_set_log_level(_code_of(LOG_LEVELS, level, "log level")))


# ---- arrays in and out ---------------------------------------------------------

def _is_torch(x):
    return type(x).__module__.startswith("torch") and "torch" in sys.modules and \
        isinstance(x, sys.modules["torch"].Tensor)


def _cpu_tensor(x, name):
    """A torch tensor, detached, after checking that it lives on the CPU."""
    if x.device.type != "cpu":
        raise NotSupported(
            f"{name} is a {x.device.type} tensor; only attend() takes CUDA tensors "
            "(move it with .cpu())")
    return x.detach()


def _to_numpy(x, name):
    """x as a numpy array sharing its memory where it can; torch CPU tensors
    through .numpy() (zero-copy)."""
    if _is_torch(x):
        x = _cpu_tensor(x, name)
        if x.dtype not in (sys.modules["torch"].float32, sys.modules["torch"].float16):
            x = x.float()  # others have no numpy view (append_document passes bfloat16 as bits)
        return x.resolve_conj().resolve_neg().numpy()
    return np.asarray(x)


def _is_bfloat16(x):
    """x is a torch bfloat16 tensor, or a numpy array of a bfloat16 dtype
    (ml_dtypes', as jax uses)."""
    if _is_torch(x):
        return x.dtype == sys.modules["torch"].bfloat16
    return isinstance(x, np.ndarray) and x.dtype.name == "bfloat16" and x.dtype.itemsize == 2


def _bfloat16_bits(x, name):
    """A bfloat16 array's bits as a C-ordered uint16 numpy array, sharing its
    memory when it is contiguous (a torch view through int16, which numpy
    has); a non-contiguous one is made contiguous, still as bfloat16."""
    if _is_torch(x):
        x = _cpu_tensor(x, name)
        if not x.is_contiguous():
            x = x.contiguous()
        a = x.view(sys.modules["torch"].int16).numpy().view(np.uint16)
    else:
        a = x.view(np.uint16)
    return np.require(a, dtype=np.uint16, requirements=["C", "A"])


def _bfloat16_bits_to_float32(bits):
    """uint16 bfloat16 bits widened to float32 (exact: bfloat16 is a float32's
    top half)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _document_input(x, name):
    """keys or values for msa_append_document: (array, msa_dtype_t code).
    float32 and float16 as they are, bfloat16 as its uint16 bits (code
    MSA_BFLOAT16) without a copy; anything else converted to float32."""
    if _is_bfloat16(x):
        return _bfloat16_bits(x, name), _BFLOAT16
    a = _input(x, name, (np.dtype(np.float32), np.dtype(np.float16)))
    return a, _DTYPE_CODES[a.dtype]


def _same_dtype(k, k_code, v, v_code):
    """keys and values in one dtype, as the C API takes them: unchanged when
    they already agree, else both float32 (every accepted dtype widens to
    float32 exactly)."""
    if k_code == v_code:
        return k, v, k_code

    def widen(a, code):
        return _bfloat16_bits_to_float32(a) if code == _BFLOAT16 else a.astype(np.float32)
    return widen(k, k_code), widen(v, v_code), _DTYPE_CODES[np.dtype(np.float32)]


def _input(x, name, dtypes):
    """A C-ordered, aligned array of one of `dtypes` (a copy only if x is not one)."""
    a = _to_numpy(x, name)
    if a.dtype.kind not in "fiub":
        raise InvalidArgument(f"{name} must be a real-valued array, got dtype {a.dtype}")
    dtype = a.dtype if a.dtype in dtypes else dtypes[0]
    return np.require(a, dtype=dtype, requirements=["C", "A"])


def _output(x, name, shape):
    """The caller's output array, written in place: it must be float32, C
    order and `shape` already, since writing into a converted copy would lose
    the result."""
    if _is_torch(x):
        if x.device.type != "cpu":
            raise NotSupported(f"{name} is a {x.device.type} tensor; this version takes CPU tensors only")
        x = x.detach().numpy()
    if not isinstance(x, np.ndarray):
        raise InvalidArgument(f"{name} must be a numpy array or torch CPU tensor, got {type(x).__name__}")
    if x.dtype != np.float32 or tuple(x.shape) != tuple(shape) or not x.flags.c_contiguous \
            or not x.flags.aligned or not x.flags.writeable:
        raise InvalidArgument(
            f"{name} must be a writable C-ordered float32 array of shape {tuple(shape)}, "
            f"got {x.dtype} {tuple(x.shape)}{'' if x.flags.c_contiguous else ' (not C-ordered)'}")
    return x


def _shape_error(name, expected, got):
    return InvalidArgument(f"{name}: expected shape [{expected}], got {tuple(got)}")


# ---- the store -------------------------------------------------------------------

class Prefetch:
    """A prefetch in flight (Store.prefetch). wait() blocks until its blocks are
    in the cache and raises what the reads hit; the handle is freed by close(),
    on leaving a `with` block, or when garbage-collected."""

    def __init__(self, store, handle):
        self._store = store  # keeps the store open while the prefetch is pending
        self._handle = handle

    def wait(self):
        if self._handle is None:
            raise InvalidArgument("Prefetch.wait: the prefetch was closed")
        _check(_c.msa_prefetch_wait(self._handle))

    def close(self):
        handle, self._handle = self._handle, None
        if handle is not None:
            _c.msa_prefetch_free(handle)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class Store:
    """An open msa store (include/msa.h's msa_store_t).

    Make one with Store.create() or Store.open(); close it with close() or a
    `with` block (garbage collection closes it too). Staged documents that
    were not committed are discarded on close.
    """

    def __init__(self, handle, path):
        # Use Store.create / Store.open.
        self._handle = handle
        self.path = path
        g = _lib.Geometry()
        try:
            _check(_c.msa_store_geometry(self._handle, ctypes.byref(g)))
        except Exception:
            self.close()
            raise
        self._geometry = Geometry(g.layers, g.kv_heads, g.head_dim, g.block_tokens,
                                  _name_of(CODECS, g.codec), _name_of(SUMMARIES, g.summary),
                                  g.summary_centroids)

    @classmethod
    def create(cls, path, *, layers, kv_heads, head_dim, block_tokens=None, codec=None,
               summary=None, summary_centroids=None):
        """Creates a store in directory `path` (created if absent; it must not hold a
        store) and opens it for writing. codec: 'f16' (default), 'bf16', 'int8', 'int4'
        or an msa_codec_t number (README "Codecs"); summary: 'hybrid' (default),
        'bound', 'mean' or 'centroids'; None: the library's default."""
        g = _c.msa_geometry_default_params()
        g.layers, g.kv_heads, g.head_dim = layers, kv_heads, head_dim
        if block_tokens is not None:
            g.block_tokens = block_tokens
        if codec is not None:
            g.codec = _code_of(CODECS, codec, "codec")
        if summary is not None:
            g.summary = _code_of(SUMMARIES, summary, "summary")
        if summary_centroids is not None:
            g.summary_centroids = summary_centroids
        handle = ctypes.c_void_p()
        _check(_c.msa_store_create(_path_bytes(path), ctypes.byref(g), ctypes.byref(handle)))
        return cls(handle, str(path))

    @classmethod
    def open(cls, path, *, read_only=False, cache_bytes=None, gpu_pool_bytes=None, queue_depth=None,
             allow_io_uring=True, query_threads=None):
        """Opens an existing store (msa.NotFound if `path` holds none). read_only: no
        writer lock, no appends; sees what was committed when opened. cache_bytes:
        the host cache of decoded blocks (0: none; default 256 MiB); gpu_pool_bytes:
        device memory for the GPU block pool (0: never the GPU; default 256 MiB);
        queue_depth: io_uring entries (default 256); allow_io_uring=False reads with
        the pread thread pool; query_threads: threads one query's routing scan may
        use, the caller's included (default: the hardware threads, up to 8)
        (msa_store_open_with)."""
        p = _c.msa_open_default_params()
        p.read_only = 1 if read_only else 0
        if cache_bytes is not None:
            p.cache_bytes = cache_bytes
        if gpu_pool_bytes is not None:
            p.gpu_pool_bytes = gpu_pool_bytes
        if queue_depth is not None:
            p.queue_depth = queue_depth
        p.allow_io_uring = 1 if allow_io_uring else 0
        if query_threads is not None:
            p.query_threads = query_threads
        handle = ctypes.c_void_p()
        _check(_c.msa_store_open_with(_path_bytes(path), ctypes.byref(p), ctypes.byref(handle)))
        return cls(handle, str(path))

    def close(self):
        """Closes the store (idempotent). No other call on it may be in flight."""
        handle, self._handle = getattr(self, "_handle", None), None
        if handle:
            _c.msa_store_close(handle)

    @property
    def closed(self):
        return not self._handle

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self):
        state = "closed" if self.closed else repr(self._geometry)
        return f"msa.Store({self.path!r}, {state})"

    def _live(self, what):
        if not self._handle:
            raise InvalidArgument(f"{what}: the store {self.path} is closed")
        return self._handle

    @property
    def geometry(self):
        """The store's Geometry (fixed at creation)."""
        return self._geometry

    # -- writing --

    def append_document(self, name, keys, values):
        """Stages a document and returns its id. keys and values:
        [layers, kv_heads, tokens, head_dim], float16, float32 or bfloat16 (torch
        tensors; passed as their bits, without a copy); anything else is converted
        to float32, and so are both if their dtypes differ. The store's codec
        rounds the input (f16: to fp16). Neither durable nor visible to queries
        until commit()."""
        handle = self._live("append_document")
        g = self._geometry
        k, k_code = _document_input(keys, "keys")
        v, v_code = _document_input(values, "values")
        expected = f"layers={g.layers}, kv_heads={g.kv_heads}, tokens, head_dim={g.head_dim}"
        for arg, a in (("keys", k), ("values", v)):
            if a.ndim != 4 or a.shape[0] != g.layers or a.shape[1] != g.kv_heads \
                    or a.shape[3] != g.head_dim:
                raise _shape_error(arg, expected, a.shape)
        if v.shape != k.shape:
            raise InvalidArgument(f"values: shape {v.shape} differs from keys' {k.shape}")
        k, v, code = _same_dtype(k, k_code, v, v_code)  # one dtype for both in the C API
        doc_id = ctypes.c_uint64()
        _check(_c.msa_append_document(handle, str(name).encode("utf-8"), k.ctypes.data,
                                      v.ctypes.data, k.shape[2], code, ctypes.byref(doc_id)))
        return doc_id.value

    def commit(self):
        """Makes every staged document durable (synced) and visible."""
        _check(_c.msa_commit(self._live("commit")))

    def delete_document(self, doc_id):
        """Stages the deletion of committed document doc_id (an id from
        append_document or documents()); commit() makes it durable and visible.
        Raises msa.NotFound if no such document is committed."""
        _check(_c.msa_delete_document(self._live("delete_document"), int(doc_id)))

    def compact(self):
        """Reclaims the disk space of deleted documents (one commit); returns a dict
        of segments_removed, bytes_reclaimed, blocks_moved and blocks_dropped."""
        st = _lib.CompactStats()
        _check(_c.msa_compact(self._live("compact"), ctypes.byref(st)))
        return {name: getattr(st, name) for name, _ in st._fields_}

    # -- reading --

    def _query(self, what, q, top_k, exact, gqa_combine, nprobe, candidates, exact_routing,
               channels, documents, gpu="auto", document_sinks=False):
        """q as a float32 array [n, q_heads, head_dim], the params struct, and the
        documents array the struct points into (keep it alive for the call)."""
        qa = _input(q, "q", (np.dtype(np.float32),))
        self._check_q_shape(qa.shape)
        p, docs = self._params(what, top_k, exact, gqa_combine, nprobe, candidates, exact_routing,
                               channels, documents, gpu, document_sinks)
        return qa, p, docs

    def _check_q_shape(self, shape):
        g = self._geometry
        if len(shape) != 3 or shape[2] != g.head_dim or shape[1] == 0 or shape[1] % g.kv_heads != 0:
            raise _shape_error("q", f"n, q_heads (a multiple of kv_heads={g.kv_heads}), "
                                    f"head_dim={g.head_dim}", tuple(shape))

    def _params(self, what, top_k, exact, gqa_combine, nprobe, candidates, exact_routing,
                channels, documents, gpu="auto", document_sinks=False):
        """The params struct, and the documents array it points into (keep it
        alive for the call)."""
        p = _c.msa_attend_default_params()
        if top_k is not None:
            p.top_k = top_k
        p.exact = 1 if exact else 0
        p.gqa_combine = _code_of(GQA_COMBINE, gqa_combine, "gqa_combine")
        p.nprobe, p.candidates, p.channels = nprobe, candidates, channels
        p.exact_routing = 1 if exact_routing else 0
        p.gpu = _code_of(GPU_MODES, gpu, "gpu")
        p.document_sinks = 1 if document_sinks else 0
        docs = None
        if documents is not None:
            docs = np.ascontiguousarray(np.asarray(documents, dtype=np.uint64).reshape(-1))
            if docs.size == 0:
                raise InvalidArgument(f"{what}: documents is empty (None means all documents)")
            p.documents = docs.ctypes.data_as(ctypes.POINTER(ctypes.c_uint64))
            p.n_documents = docs.size
        return p, docs

    def attend(self, layer, q, *, top_k=None, exact=False, gqa_combine="max", nprobe=0,
               candidates=0, exact_routing=False, channels=0, documents=None, out=None, lse=None,
               gpu="auto", document_sinks=False):
        """Attention of queries over the memory of one layer; returns (out, lse).

        q: [n, q_heads, head_dim] float32 (q_heads a multiple of kv_heads; query head h
        reads KV head h // (q_heads // kv_heads)). out: [n, q_heads, head_dim] float32;
        lse: [n, q_heads] float32, the natural log of the softmax denominator of the
        scaled scores q.k / sqrt(head_dim), for merging with other attention.
        top_k: routed blocks per KV head besides the first and last (None: 16);
        exact: every block of the layer; documents: ids to restrict the query to.
        document_sinks: also attend over every queried document's first block (a
        document run from position 0 starts with its own attention sink); top_k then
        counts the routed blocks besides them.
        gpu: "auto" (the GPU when msa has one and the call suits it), "off" or
        "require" (msa.NotSupported, saying why, when it cannot) for host arrays.
        out=/lse=: arrays to write into (exact shape, float32, C order).
        A torch q gives torch results (sharing memory with numpy arrays). A CUDA
        float32 q runs on the GPU through msa_attend_device: out and lse are CUDA
        tensors on q's device, written in order on its current stream (the call
        returns once the work is enqueued, like any CUDA op); out=/lse= then
        must be CUDA float32 tensors of the exact shape, contiguous."""
        handle = self._live("attend")
        if _is_torch(q) and q.device.type == "cuda":
            return self._attend_cuda(handle, layer, q, out, lse,
                                     self._params("attend", top_k, exact, gqa_combine, nprobe,
                                                  candidates, exact_routing, channels, documents,
                                                  gpu, document_sinks))
        qa, p, docs = self._query("attend", q, top_k, exact, gqa_combine, nprobe, candidates,
                                  exact_routing, channels, documents, gpu, document_sinks)
        n, q_heads = qa.shape[0], qa.shape[1]
        o = np.empty(qa.shape, np.float32) if out is None else _output(out, "out", qa.shape)
        s = np.empty((n, q_heads), np.float32) if lse is None else _output(lse, "lse", (n, q_heads))
        _check(_c.msa_attend(handle, layer, qa.ctypes.data, n, q_heads, ctypes.byref(p),
                             o.ctypes.data, s.ctypes.data))
        del docs  # the C call is done with it
        if out is not None or lse is not None:
            return (o if out is None else out), (s if lse is None else lse)
        if _is_torch(q):
            torch = sys.modules["torch"]
            return torch.from_numpy(o), torch.from_numpy(s)
        return o, s

    def _attend_cuda(self, handle, layer, q, out, lse, params):
        """attend() for a CUDA q: device pointers and q's current stream."""
        torch = sys.modules["torch"]
        p, docs = params
        if q.dtype != torch.float32:
            raise InvalidArgument(f"q is a CUDA {q.dtype} tensor; the GPU entry point takes float32")
        self._check_q_shape(q.shape)
        q = q.detach().contiguous()
        n, q_heads = q.shape[0], q.shape[1]

        def device_output(x, name, shape):
            if x is None:
                return torch.empty(shape, dtype=torch.float32, device=q.device)
            if not _is_torch(x) or x.device != q.device or x.dtype != torch.float32 \
                    or tuple(x.shape) != tuple(shape) or not x.is_contiguous():
                raise InvalidArgument(
                    f"{name} must be a contiguous float32 tensor of shape {tuple(shape)} on {q.device} "
                    f"(q's device), got {type(x).__name__} "
                    f"{getattr(x, 'dtype', '')} {tuple(getattr(x, 'shape', ()))} "
                    f"on {getattr(x, 'device', 'the host')}")
            return x

        o = device_output(out, "out", tuple(q.shape))
        s = device_output(lse, "lse", (n, q_heads))
        stream = torch.cuda.current_stream(q.device).cuda_stream
        with torch.cuda.device(q.device):
            _check(_c.msa_attend_device(handle, layer, q.data_ptr(), n, q_heads, ctypes.byref(p),
                                        o.data_ptr(), s.data_ptr(), ctypes.c_void_p(stream)))
        del docs  # routing (on the CPU) is done with it
        return o, s

    def prefetch(self, layer, q, *, top_k=None, exact=False, gqa_combine="max", nprobe=0,
                 candidates=0, exact_routing=False, channels=0, documents=None, gpu="auto",
                 document_sinks=False):
        """Starts reading the blocks attend() with the same arguments will need into
        the block cache (or, for a GPU call, the GPU pool), on a background thread, and returns a Prefetch at once
        (q is copied). Typical use: prefetch layer l + 1, then attend layer l,
        then wait() and attend layer l + 1."""
        handle = self._live("prefetch")
        qa, p, docs = self._query("prefetch", q, top_k, exact, gqa_combine, nprobe, candidates,
                                  exact_routing, channels, documents, gpu, document_sinks)
        out = ctypes.c_void_p()
        _check(_c.msa_prefetch(handle, layer, qa.ctypes.data, qa.shape[0], qa.shape[1],
                               ctypes.byref(p), ctypes.byref(out)))
        del docs
        return Prefetch(self, out)

    def prefetch_layers(self, layer_queries, *, top_k=None, exact=False, gqa_combine="max", nprobe=0,
                        candidates=0, exact_routing=False, channels=0, documents=None,
                        document_sinks=False):
        """prefetch() for several layers in one batch of reads: layer_queries maps
        each layer to its q [n, q_heads, head_dim] (a dict, or (layer, q) pairs; the
        same q_heads for all). Into the host block cache only. Returns a Prefetch."""
        handle = self._live("prefetch_layers")
        pairs = list(layer_queries.items() if isinstance(layer_queries, dict) else layer_queries)
        arrays, p, docs = [], None, None
        for layer, q in pairs:
            qa, p, docs = self._query("prefetch_layers", q, top_k, exact, gqa_combine, nprobe, candidates,
                                      exact_routing, channels, documents, "off", document_sinks)
            arrays.append((int(layer), qa))
        if not arrays:
            raise InvalidArgument("prefetch_layers: no layers given")
        q_heads = arrays[0][1].shape[1]
        if any(qa.shape[1] != q_heads for _, qa in arrays):
            raise InvalidArgument("prefetch_layers: every layer's q must have the same q_heads")
        table = (_lib.LayerQueries * len(arrays))(
            *[_lib.LayerQueries(layer, qa.shape[0], qa.ctypes.data) for layer, qa in arrays])
        out = ctypes.c_void_p()
        _check(_c.msa_prefetch_layers(handle, table, len(arrays), q_heads, ctypes.byref(p), ctypes.byref(out)))
        del docs, arrays
        return Prefetch(self, out)

    def documents(self):
        """The committed documents, in id order, as a list of Document."""
        handle = self._live("documents")
        arr = ctypes.POINTER(_lib.Document)()
        count = ctypes.c_size_t()
        _check(_c.msa_list_documents(handle, ctypes.byref(arr), ctypes.byref(count)))
        try:
            return [Document(arr[i].id, arr[i].name.decode("utf-8", "replace"), arr[i].tokens,
                             arr[i].first_block, arr[i].blocks) for i in range(count.value)]
        finally:
            _c.msa_documents_free(arr)

    def stats(self):
        """Sizes of the committed state and this handle's cache counters, as a dict
        (the fields of msa_stats_t)."""
        s = _lib.Stats()
        _check(_c.msa_store_stats(self._live("stats"), ctypes.byref(s)))
        return {name: getattr(s, name) for name, _ in _lib.Stats._fields_}

    def fetch_stats(self):
        """This handle's block cache and disk read counters, as a dict (the
        fields of msa_fetch_stats_t; reader is "io_uring" or "pread")."""
        s = _lib.FetchStats()
        _check(_c.msa_store_fetch_stats(self._live("fetch_stats"), ctypes.byref(s)))
        out = {name: getattr(s, name) for name, _ in _lib.FetchStats._fields_ if not name.startswith("reserved")}
        out["reader"] = "io_uring" if s.reader == 1 else "pread"
        return out


def _path_bytes(path):
    return os.fsencode(path)
