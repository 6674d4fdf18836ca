/* msa: an out-of-core memory store with disk-backed attention. The C API.
 *
 * A store is a directory holding the keys and values a language model's
 * attention produced for a corpus, in compressed blocks on disk, with an
 * index that picks, for a query, the few blocks that matter. msa_attend()
 * computes softmax(q K^T / sqrt(head_dim)) V over those blocks and returns
 * the log-sum-exp too, so the caller can merge it with its own attention.
 *
 * Conventions
 *   - Every function returning msa_status_t returns MSA_OK (0) on success.
 *     On failure, msa_last_error() gives a readable message for the calling
 *     thread, valid until that thread's next msa call. Nothing in this API
 *     throws, aborts or exits.
 *   - Handles are opaque. What msa allocates, msa frees (msa_store_close,
 *     msa_prefetch_free, msa_documents_free); each also accepts NULL.
 *   - Arrays are C order; shapes are written [a, b, c] meaning element
 *     (i, j, k) is at x[(i * b + j) * c + k].
 *   - Thread safety: one msa_store_t may be used from several threads.
 *     Queries (msa_attend, msa_prefetch, msa_store_stats,
 *     msa_store_geometry, msa_list_documents) run concurrently with each
 *     other and with one writer (msa_append_document, msa_commit); a query
 *     sees the documents of the last completed commit. Functions without a
 *     store argument may be called from any thread at any time.
 *   - Output: on success nothing is printed. The library logs warnings (a
 *     fallback taken) and errors to stderr; see msa_set_log_level.
 *   - Linking: libmsa.so (CMake target msa_shared) exports exactly the msa_*
 *     functions below; libmsa.a (target msa) is the same code for static
 *     linking (link it with a C++ linker).
 *   - ABI: include/msa.abi records every prototype, struct layout and enum
 *     value of this header; tools/check_abi.sh (ctest abi_check) fails when
 *     they change without the version changing. Additions bump the minor
 *     version, changes to what exists the major version.
 */
#ifndef MSA_H_
#define MSA_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Marks the functions of the API: the only symbols libmsa.so exports (its
 * linker version script hides all else, also when this is defined empty). */
#ifndef MSA_EXPORT
#if defined(__GNUC__) || defined(__clang__)
#define MSA_EXPORT __attribute__((visibility("default")))
#else
#define MSA_EXPORT
#endif
#endif

#define MSA_VERSION_MAJOR 0
#define MSA_VERSION_MINOR 9
#define MSA_VERSION_PATCH 0
/* (major << 16) | (minor << 8) | patch: compare with msa_version(). */
#define MSA_VERSION ((MSA_VERSION_MAJOR << 16) | (MSA_VERSION_MINOR << 8) | MSA_VERSION_PATCH)

/* The library's MSA_VERSION. A caller built against another major version
 * should refuse to run; one built against a later minor version may call
 * functions this library lacks. */
MSA_EXPORT uint32_t msa_version(void);

typedef enum msa_status_t {
  MSA_OK = 0,
  MSA_INVALID_ARGUMENT = 1, /* a bad argument, shape, dtype or range */
  MSA_NOT_FOUND = 2,        /* no such store, document or file */
  MSA_CORRUPTION = 3,       /* checksum mismatch or malformed data on disk */
  MSA_IO_ERROR = 4,         /* the operating system failed a read, write or sync */
  MSA_NOT_SUPPORTED = 5,    /* not built in, or not available on this machine */
  MSA_ALREADY_EXISTS = 6,   /* store or document name already taken */
  MSA_INTERNAL = 7          /* a bug in msa */
} msa_status_t;

/* Message of the calling thread's last failed call ("" if none). The string
 * is owned by msa and valid until this thread's next msa call. It names the
 * function and the argument, file or document at fault. */
MSA_EXPORT const char* msa_last_error(void);

typedef enum msa_dtype_t {
  MSA_FLOAT32 = 0,
  MSA_FLOAT16 = 1, /* IEEE binary16, passed as uint16_t bits */
  MSA_BFLOAT16 = 2 /* bfloat16 (the top half of a float32), passed as uint16_t bits */
} msa_dtype_t;

/* How blocks are stored. Lossless codecs keep their own dtype bit-exact and
 * round other input to it; the quantised ones bound each element's error by
 * half its group's step (BENCHMARKS.md "Codecs" has ratios and measured errors). */
typedef enum msa_codec_t {
  MSA_CODEC_F16 = 1,  /* fp16, byte-shuffled, zstd: lossless for fp16 input */
  MSA_CODEC_BF16 = 2, /* bfloat16, byte-shuffled, zstd: lossless for bf16 input */
  MSA_CODEC_INT8 = 3, /* 8-bit: keys per channel, values per token (about 1.9x smaller than fp16) */
  MSA_CODEC_INT4 = 4  /* 4-bit, groups of 32: keys per channel, values per token (about 3.2x) */
} msa_codec_t;

/* How the router summarises a block (see store/summary.h): the mean key,
 * Quest's per-channel min/max bound, or a few k-means centroids. */
typedef enum msa_summary_t {
  MSA_SUMMARY_MEAN = 1,
  MSA_SUMMARY_BOUND = 2,
  MSA_SUMMARY_CENTROIDS = 3,
  MSA_SUMMARY_HYBRID = 4 /* the bound and the mean, as two rankings taken in turn */
} msa_summary_t;

/* The fixed shape of a store, chosen at creation. */
typedef struct msa_geometry_t {
  uint32_t layers;       /* model layers stored (>= 1) */
  uint32_t kv_heads;     /* KV heads per layer (>= 1) */
  uint32_t head_dim;     /* channels per head (>= 1) */
  uint32_t block_tokens; /* tokens per block; 0 means the default, 64 */
  msa_codec_t codec;     /* 0 means the default, MSA_CODEC_F16 */
  msa_summary_t summary; /* 0 means the default, MSA_SUMMARY_HYBRID */
  uint32_t summary_centroids; /* centroids per block for MSA_SUMMARY_CENTROIDS; 0: 4 */
} msa_geometry_t;

/* The defaults of a geometry: block_tokens 64, codec MSA_CODEC_F16, summary
 * MSA_SUMMARY_HYBRID, summary_centroids 4; layers, kv_heads and head_dim are
 * 0, which the caller must set. (All-zero fields in msa_store_create mean
 * the same defaults; this spells them out.) */
MSA_EXPORT msa_geometry_t msa_geometry_default_params(void);

/* An open store. Created by msa_store_create or msa_store_open, freed by
 * msa_store_close; owns its files' descriptors, a block cache and a
 * background prefetch thread. */
typedef struct msa_store_t msa_store_t;

/* Creates a new store in directory `path` (created if absent; it must not
 * already hold a store) and opens it for writing. *out receives the handle,
 * which the caller owns and closes with msa_store_close; on failure *out is
 * NULL. geometry is read during the call only. */
MSA_EXPORT msa_status_t msa_store_create(const char* path, const msa_geometry_t* geometry,
                                         msa_store_t** out);

/* Opens an existing store. read_only != 0 opens without the writer lock
 * (several read-only processes may share a store with one writer process);
 * appends then fail. A read-only handle sees the documents committed when it
 * was opened. Only one handle, in one process, may have a store open for
 * writing. *out receives the handle (NULL on failure; MSA_NOT_FOUND when
 * path holds no store), which the caller closes with msa_store_close. */
MSA_EXPORT msa_status_t msa_store_open(const char* path, int read_only, msa_store_t** out);

/* How msa_store_open_with opens a store. Start from
 * msa_open_default_params(), then change what you need. Since 0.8. */
typedef struct msa_open_params_t {
  int read_only;            /* as msa_store_open's read_only; default 0 */
  uint32_t queue_depth;     /* io_uring entries (1-4096); default 256 */
  uint64_t cache_bytes;     /* host cache of decoded blocks, shared by the handle's
                               queries and prefetches (LRU); 0: no cache; default 256 MiB */
  uint64_t gpu_pool_bytes;  /* device memory for the GPU block pool, allocated at the
                               first query that runs on the GPU; 0: never use the GPU;
                               default 256 MiB */
  int allow_io_uring;       /* 0: read with the pread thread pool; default 1 */
  uint32_t query_threads;   /* threads one query's routing scan may use, the calling
                               thread included (1: the caller alone; at most 256);
                               0: the default, the machine's hardware threads up to 8.
                               Answers are the same with any count. Since 0.9 */
  uint64_t reserved[4];     /* must be 0 (room for later fields) */
} msa_open_params_t;

MSA_EXPORT msa_open_params_t msa_open_default_params(void);

/* msa_store_open with params (NULL: the defaults). MSA_INVALID_ARGUMENT
 * for a queue depth or query_threads out of range or reserved fields that
 * are not 0.
 * Since 0.8. */
MSA_EXPORT msa_status_t msa_store_open_with(const char* path, const msa_open_params_t* params,
                                            msa_store_t** out);

/* Closes the handle. Staged but uncommitted documents are discarded. NULL is
 * a no-op. No call on the handle may be in flight. */
MSA_EXPORT void msa_store_close(msa_store_t* store);

/* Copies the store's geometry (fixed at creation) into *out. */
MSA_EXPORT msa_status_t msa_store_geometry(const msa_store_t* store, msa_geometry_t* out);

/* Stages one document: keys and values of shape
 * [layers, kv_heads, tokens, head_dim], of type dtype (float32 input is
 * rounded to fp16 by the f16 codec). The arrays are copied; the caller keeps
 * ownership. `name` must be unique in the store. The document is neither
 * durable nor visible until msa_commit() returns MSA_OK. *doc_id (may be
 * NULL) receives its id. The element (l, h, t, c) of keys is at
 * keys[((l * kv_heads + h) * tokens + t) * head_dim + c]; float16 arrays
 * hold uint16_t bits. Writer calls (this and msa_commit) are serialised on
 * a store; they run concurrently with queries. MSA_INVALID_ARGUMENT on a
 * read-only handle. */
MSA_EXPORT msa_status_t msa_append_document(msa_store_t* store, const char* name, const void* keys,
                                            const void* values, uint64_t tokens, msa_dtype_t dtype,
                                            uint64_t* doc_id);

/* Makes every staged document durable (synced to disk) and visible; returns
 * once both hold. After a failed commit the handle refuses further writes
 * until the store is reopened, which restores the last committed state. */
MSA_EXPORT msa_status_t msa_commit(msa_store_t* store);

/* One committed document, as msa_list_documents reports it. Every document
 * occupies the same block range in every stream (layer, KV head). */
typedef struct msa_document_t {
  uint64_t id;          /* as msa_append_document returned it */
  const char* name;     /* NUL-terminated; lives in the array's allocation */
  uint64_t tokens;      /* tokens of the document (in every stream) */
  uint64_t first_block; /* its first block number in every stream */
  uint64_t blocks;      /* its blocks per stream */
} msa_document_t;

/* The committed documents, in id order (the order they were appended).
 * *documents receives an array of *count entries, names included, in one
 * allocation that the caller owns and frees with msa_documents_free (not
 * free()); it is NULL when *count is 0. Staged, uncommitted documents are
 * not listed; a read-only handle lists those committed when it was opened.
 * Thread-safe like msa_attend. */
MSA_EXPORT msa_status_t msa_list_documents(const msa_store_t* store, msa_document_t** documents,
                                           size_t* count);
/* Frees what msa_list_documents returned. NULL is a no-op. */
MSA_EXPORT void msa_documents_free(msa_document_t* documents);

/* Stages the deletion of committed document doc_id; msa_commit makes it
 * durable and visible, like an append. Once committed the document is gone
 * from queries, msa_list_documents and restrictions (an id given in
 * msa_attend_params_t.documents is then MSA_NOT_FOUND), and its name may be
 * used again. MSA_NOT_FOUND if no such document is committed or its
 * deletion is already staged. Its disk space comes back with msa_compact.
 * A writer call, serialised with msa_append_document and msa_commit. */
MSA_EXPORT msa_status_t msa_delete_document(msa_store_t* store, uint64_t doc_id);

/* What msa_compact did. */
typedef struct msa_compact_stats_t {
  uint64_t segments_removed; /* segment files removed */
  uint64_t bytes_reclaimed;  /* their size on disk */
  uint64_t blocks_moved;     /* live block records copied out of them */
  uint64_t blocks_dropped;   /* deleted documents' records removed */
} msa_compact_stats_t;

/* Reclaims the disk space of deleted documents: every segment file holding
 * one of their records is rewritten (live records copied unchanged) and
 * removed, in one commit. Queries may run meanwhile. MSA_INVALID_ARGUMENT
 * while appends or deletions are staged (commit first). A crash leaves the
 * old or the new layout, never a mix; leftover files are removed the next
 * time the store is opened for writing. stats may be NULL. A writer call. */
MSA_EXPORT msa_status_t msa_compact(msa_store_t* store, msa_compact_stats_t* stats);

/* A GQA group's query heads share their KV head's blocks; a block's score
 * for the group is the max or the sum of its heads' scores. */
typedef enum msa_gqa_combine_t { MSA_GQA_MAX = 0, MSA_GQA_SUM = 1 } msa_gqa_combine_t;

/* Where msa_attend computes attention (msa_attend_params_t.gpu). The GPU
 * path keeps the store's blocks in a pool of GPU memory (256 MiB, taken on
 * the first GPU call), so a repeated block is not copied again. It reads
 * K/V as fp16 (int8/int4 blocks are decoded, then rounded to fp16) and
 * computes in float32, like the CPU path. */
typedef enum msa_gpu_t {
  MSA_GPU_AUTO = 0,   /* the GPU when msa was built with CUDA, a device is usable and the call
                         suits it (head_dim a multiple of 8 up to 256, codec not bf16, finite q
                         within fp16's range, not exact mode, its blocks fit the pool); else
                         the CPU */
  MSA_GPU_OFF = 1,    /* always the CPU */
  MSA_GPU_REQUIRE = 2 /* the GPU, or MSA_NOT_SUPPORTED saying why not */
} msa_gpu_t;

/* Options of one attend or prefetch call. Fill with
 * msa_attend_default_params(), then change what you need. */
typedef struct msa_attend_params_t {
  uint32_t top_k; /* routed blocks per KV head, besides the first (sink) and
                     last (recent) block, always included; default 16 */
  int exact;      /* != 0: attend over every block of the layer (dense) */
  msa_gqa_combine_t gqa_combine; /* how a GQA group's head scores combine; default MAX */
  uint32_t nprobe;     /* IVF lists probed per head, for streams large enough to have an
                          IVF index; 0: the default */
  uint32_t candidates; /* candidates rescored exactly: per head for the IVF (0: 4 * top_k),
                          per ranking for approximate routing (0: 2 * top_k) */
  int exact_routing;   /* != 0: score every block summary (no IVF, no approximation) */
  uint32_t channels;   /* > 0: approximate routing that reads only the `channels` key
                          channels chosen from the group's queries (each head's largest,
                          then the group's; read from a 4- and 8-bit copy of
                          the summaries), then rescores 2 * top_k candidates exactly;
                          0: the default -- approximate over 8 channels per query head
                          of the group (at most head_dim) for streams of 65,536 blocks or
                          more, exact scoring below */
  msa_gpu_t gpu;       /* where to compute (since 0.6; it sits in what was padding, so 0 --
                          MSA_GPU_AUTO -- for callers of 0.5 that zero-filled the struct) */
  const uint64_t* documents; /* restrict to these document ids (from msa_append_document or
                                msa_list_documents); NULL: all documents. Read during the
                                call (msa_prefetch copies them) */
  uint32_t n_documents;      /* entries of documents */
  int document_sinks;  /* != 0: also attend over the first block of every document queried
                          (each document run from position 0 starts with its own attention
                          sink); top_k then counts routed blocks besides them. Since 0.7; it
                          sits in what was padding, so 0 for callers of 0.6 that zero-filled
                          the struct */
} msa_attend_params_t;

/* top_k 16, gqa_combine MSA_GQA_MAX, gpu MSA_GPU_AUTO, every other field 0 (NULL). */
MSA_EXPORT msa_attend_params_t msa_attend_default_params(void);

/* Attention of queries over the memory of one layer.
 *   q   : [n, q_heads, head_dim] float32; q_heads a multiple of kv_heads,
 *         query head h reads KV head h / (q_heads / kv_heads)
 *   out : [n, q_heads, head_dim] float32, written
 *   lse : [n, q_heads] float32, written (may be NULL): natural log of the
 *         softmax denominator of the scaled scores q.k / sqrt(head_dim)
 * The caller owns all arrays; they are read or written during the call
 * only, and out/lse must not overlap q. params NULL means the defaults. An
 * empty store yields out = 0, lse = -inf. Thread-safe: any number of
 * concurrent calls on one store, alongside one writer. */
MSA_EXPORT msa_status_t msa_attend(const msa_store_t* store, uint32_t layer, const float* q,
                                   uint32_t n, uint32_t q_heads, const msa_attend_params_t* params,
                                   float* out, float* lse);

/* msa_attend with q, out and lse in CUDA device memory (shapes as
 * msa_attend's), enqueued on cuda_stream (a cudaStream_t; NULL: the legacy
 * default stream). The router runs on the CPU, so q is first copied to the
 * host: the call waits for cuda_stream up to that copy. It returns once the
 * kernel is enqueued; out and lse are written when cuda_stream reaches it,
 * and must stay allocated until then. Blocks missing from the store's GPU
 * pool are read, staged in pinned memory and copied on cuda_stream. lse
 * may be NULL. params->gpu is ignored (this is always the GPU);
 * MSA_NOT_SUPPORTED, saying why, when msa was built without CUDA, no device
 * is usable or the call does not suit the GPU (see msa_gpu_t). The calling
 * thread's current CUDA device must be the store's (the current device of
 * its first GPU call). Thread-safe like msa_attend. Since 0.6. */
MSA_EXPORT msa_status_t msa_attend_device(const msa_store_t* store, uint32_t layer, const float* q,
                                          uint32_t n, uint32_t q_heads,
                                          const msa_attend_params_t* params, float* out, float* lse,
                                          void* cuda_stream);

/* 1 when msa was built with CUDA and a device is usable, else 0; why (may be
 * NULL) then receives a static message saying why not ("" when usable).
 * Since 0.6. */
MSA_EXPORT int msa_gpu_available(const char** why);

/* Asynchronous prefetch: routes q now and reads the blocks an msa_attend
 * with the same arguments will need into the store's block cache (or, where
 * that msa_attend would run on the GPU, into the store's GPU pool, copied
 * on a stream of its own), on a background thread; returns at once (q and params, documents included,
 * are copied). Typical use: prefetch layer l + 1, then attend layer l.
 * Shapes as msa_attend's. *out receives a handle that the caller owns and
 * frees with msa_prefetch_free (it may outlive the store: closing the store
 * finishes its queued prefetches first). Prefetches of one store run one at
 * a time, in order. A prefetch of exact mode does nothing. Thread-safe like
 * msa_attend. */
typedef struct msa_prefetch_t msa_prefetch_t;
MSA_EXPORT msa_status_t msa_prefetch(const msa_store_t* store, uint32_t layer, const float* q,
                                     uint32_t n, uint32_t q_heads,
                                     const msa_attend_params_t* params, msa_prefetch_t** out);
/* One layer's queries for msa_prefetch_layers: q [n, q_heads, head_dim]. */
typedef struct msa_layer_queries_t {
  uint32_t layer;
  uint32_t n;
  const float* q;
} msa_layer_queries_t;

/* Prefetch of several layers in one batch of reads: each layer routed as
 * msa_prefetch would, and the union of their blocks read into the store's
 * host block cache with one submission (the reader's queue depth
 * permitting), on the background thread. For when the queries of several
 * layers are known at once. The host cache only (not the GPU pool). The
 * layers' q arrays and params are copied; a bad layer or q fails the
 * prefetch (msa_prefetch_wait returns it). *out as msa_prefetch's.
 * Since 0.8. */
MSA_EXPORT msa_status_t msa_prefetch_layers(const msa_store_t* store, const msa_layer_queries_t* layers,
                                            uint32_t n_layers, uint32_t q_heads,
                                            const msa_attend_params_t* params, msa_prefetch_t** out);
/* Waits for the prefetch; returns its status (a bad argument, or an I/O or
 * checksum error of the reads, with msa_last_error set on this thread). May
 * be called more than once, but not from several threads at once on one
 * handle. */
MSA_EXPORT msa_status_t msa_prefetch_wait(msa_prefetch_t* prefetch);
/* Waits if still running, then frees. NULL is a no-op. No msa_prefetch_wait
 * on the handle may be in flight. */
MSA_EXPORT void msa_prefetch_free(msa_prefetch_t* prefetch);

typedef struct msa_stats_t {
  uint64_t documents;         /* committed documents */
  uint64_t tokens;            /* committed tokens per stream */
  uint64_t blocks_per_stream; /* committed blocks per stream */
  uint64_t stored_bytes;      /* compressed block records, all streams */
  uint64_t raw_bytes;         /* the same K/V as plain fp16 */
  uint64_t cache_capacity_bytes; /* this handle's host block cache */
  uint64_t cache_used_bytes;
  uint64_t cache_hits;           /* blocks served from the cache */
  uint64_t cache_misses;         /* blocks read from disk */
} msa_stats_t;

/* Fills *out with the committed state's sizes and this handle's cache
 * counters. Thread-safe like msa_attend. */
MSA_EXPORT msa_status_t msa_store_stats(const msa_store_t* store, msa_stats_t* out);

/* How this handle reads blocks (msa_fetch_stats_t.reader). */
typedef enum msa_reader_t {
  MSA_READER_PREAD = 0,   /* the thread-pool fallback (io_uring refused or MSA_IO_URING=0) */
  MSA_READER_IO_URING = 1 /* one io_uring submission per fetch */
} msa_reader_t;

/* The fetch path's counters of this handle since it was opened (0.6): its
 * host block cache and its reads from disk (queries, prefetches, stream
 * reads). A block counts once per lookup: a query that needs it twice (two
 * rows) looks it up once. */
typedef struct msa_fetch_stats_t {
  uint64_t cache_capacity_bytes; /* the cache's bound (0: no cache) */
  uint64_t cache_resident_bytes; /* bytes held now */
  uint64_t cache_entries;        /* blocks held now */
  uint64_t cache_hits;           /* blocks served from the cache */
  uint64_t cache_misses;         /* lookups that missed */
  uint64_t cache_hit_bytes;      /* bytes of the blocks served, as kept (float32, or int8/int4 records) */
  uint64_t cache_evictions;      /* blocks evicted to make room */
  uint64_t disk_blocks_read;     /* block records read from disk */
  uint64_t disk_bytes_read;      /* their bytes, 4096-padded */
  uint32_t reader;               /* an msa_reader_t */
  uint32_t reserved32;           /* 0 */
  uint64_t reserved[6];          /* 0: room for later counters in this struct's size */
} msa_fetch_stats_t;

/* Fills *out (every field written, reserved ones 0). Thread-safe like
 * msa_attend. */
MSA_EXPORT msa_status_t msa_store_fetch_stats(const msa_store_t* store, msa_fetch_stats_t* out);

/* Logging. msa logs through spdlog's default logger. When the library is
 * loaded it sets that logger's level to MSA_LOG_WARN, so that nothing is
 * printed on the happy path, only warnings (a fallback taken, such as no
 * io_uring) and errors, and, unless the host installed a logger of its own,
 * replaces spdlog's stdout logger with one writing to stderr. The
 * environment variable MSA_LOG_LEVEL (trace, debug, info, warn, error, off)
 * overrides the default level; msa_set_log_level overrides both. The level
 * is process-wide: in a process that uses spdlog itself, it is that
 * process's default logger's level too. */
typedef enum msa_log_level_t {
  MSA_LOG_TRACE = 0,
  MSA_LOG_DEBUG = 1,
  MSA_LOG_INFO = 2, /* e.g. a line per store opened, a router index trained */
  MSA_LOG_WARN = 3,
  MSA_LOG_ERROR = 4,
  MSA_LOG_OFF = 6
} msa_log_level_t;

/* Sets the log level: one of msa_log_level_t (MSA_INVALID_ARGUMENT else). */
MSA_EXPORT msa_status_t msa_set_log_level(int level);

#ifdef __cplusplus
}
#endif

#endif /* MSA_H_ */
