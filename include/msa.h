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
 *   - Handles are opaque. What msa allocates, msa frees (msa_store_close).
 *     Closing NULL is a no-op.
 *   - Arrays are C order; shapes are written [a, b, c] meaning element
 *     (i, j, k) is at x[(i * b + j) * c + k].
 *   - Thread safety: one msa_store_t may be used from several threads.
 *     Queries (msa_attend, msa_store_stats) run concurrently with each other
 *     and with one writer (msa_append_document, msa_commit); a query sees the
 *     documents of the last completed commit.
 */
#ifndef MSA_H_
#define MSA_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MSA_VERSION_MAJOR 0
#define MSA_VERSION_MINOR 2
#define MSA_VERSION_PATCH 0
/* (major << 16) | (minor << 8) | patch: compare with msa_version(). */
#define MSA_VERSION ((MSA_VERSION_MAJOR << 16) | (MSA_VERSION_MINOR << 8) | MSA_VERSION_PATCH)

/* The library's MSA_VERSION. A caller built against another major version
 * should refuse to run. */
uint32_t msa_version(void);

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
 * is owned by msa and valid until this thread's next msa call. */
const char* msa_last_error(void);

typedef enum msa_dtype_t {
  MSA_FLOAT32 = 0,
  MSA_FLOAT16 = 1 /* IEEE binary16, passed as uint16_t bits */
} msa_dtype_t;

typedef enum msa_codec_t {
  MSA_CODEC_F16 = 1 /* fp16, byte-shuffled, zstd: lossless for fp16 input */
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

typedef struct msa_store_t msa_store_t;

/* Creates a new store in directory `path` (created if absent; it must not
 * already hold a store) and opens it for writing. *out receives the handle. */
msa_status_t msa_store_create(const char* path, const msa_geometry_t* geometry, msa_store_t** out);

/* Opens an existing store. read_only != 0 opens without the writer lock
 * (several read-only processes may share a store with one writer process);
 * appends then fail. A read-only handle sees the documents committed when it
 * was opened. */
msa_status_t msa_store_open(const char* path, int read_only, msa_store_t** out);

/* Closes the handle. Staged but uncommitted documents are discarded. NULL is
 * a no-op. No call on the handle may be in flight. */
void msa_store_close(msa_store_t* store);

/* The store's geometry. */
msa_status_t msa_store_geometry(const msa_store_t* store, msa_geometry_t* out);

/* Stages one document: keys and values of shape
 * [layers, kv_heads, tokens, head_dim], of type dtype (float32 input is
 * rounded to fp16 by the f16 codec). The arrays are copied; the caller keeps
 * ownership. `name` must be unique in the store. The document is neither
 * durable nor visible until msa_commit() returns MSA_OK. *doc_id (may be
 * NULL) receives its id. */
msa_status_t msa_append_document(msa_store_t* store, const char* name, const void* keys,
                                 const void* values, uint64_t tokens, msa_dtype_t dtype,
                                 uint64_t* doc_id);

/* Makes every staged document durable (synced to disk) and visible. */
msa_status_t msa_commit(msa_store_t* store);

/* A GQA group's query heads share their KV head's blocks; a block's score
 * for the group is the max or the sum of its heads' scores. */
typedef enum msa_gqa_combine_t { MSA_GQA_MAX = 0, MSA_GQA_SUM = 1 } msa_gqa_combine_t;

/* Options of one attend call. Fill with msa_attend_default_params(). */
typedef struct msa_attend_params_t {
  uint32_t top_k; /* routed blocks per KV head, besides the first (sink) and
                     last (recent) block, always included; default 16 */
  int exact;      /* != 0: attend over every block of the layer (dense) */
  msa_gqa_combine_t gqa_combine; /* how a GQA group's head scores combine; default MAX */
  uint32_t nprobe;     /* IVF lists probed per head, for streams large enough to have an
                          IVF index; 0: the default */
  uint32_t candidates; /* IVF candidates per head, rescored exactly; 0: 4 * top_k */
  int exact_routing;   /* != 0: score every block summary (no IVF) */
  uint32_t channels;   /* > 0: approximate routing that reads only each head's `channels`
                          largest query coefficients, then rescores exactly; 0: exact */
  const uint64_t* documents; /* restrict to these document ids (from msa_append_document);
                                NULL: all documents. Not copied: valid during the call */
  uint32_t n_documents;      /* entries of documents */
} msa_attend_params_t;

msa_attend_params_t msa_attend_default_params(void);

/* Attention of queries over the memory of one layer.
 *   q   : [n, q_heads, head_dim] float32; q_heads a multiple of kv_heads,
 *         query head h reads KV head h / (q_heads / kv_heads)
 *   out : [n, q_heads, head_dim] float32, written
 *   lse : [n, q_heads] float32, written (may be NULL): natural log of the
 *         softmax denominator of the scaled scores q.k / sqrt(head_dim)
 * params NULL means the defaults. An empty store yields out = 0, lse = -inf. */
msa_status_t msa_attend(const msa_store_t* store, uint32_t layer, const float* q, uint32_t n,
                        uint32_t q_heads, const msa_attend_params_t* params, float* out,
                        float* lse);

/* Asynchronous prefetch: routes q now and reads the blocks an msa_attend
 * with the same arguments will need into the store's block cache, on a
 * background thread; returns at once (q is copied). Typical use: prefetch
 * layer l + 1, then attend layer l. *out receives a handle to wait on and
 * free. A prefetch of exact mode does nothing. Thread-safe like msa_attend. */
typedef struct msa_prefetch_t msa_prefetch_t;
msa_status_t msa_prefetch(const msa_store_t* store, uint32_t layer, const float* q, uint32_t n,
                          uint32_t q_heads, const msa_attend_params_t* params, msa_prefetch_t** out);
/* Waits for the prefetch; returns its status (an I/O or checksum error of
 * the reads, for instance). May be called more than once. */
msa_status_t msa_prefetch_wait(msa_prefetch_t* prefetch);
/* Waits if still running, then frees. NULL is a no-op. */
void msa_prefetch_free(msa_prefetch_t* prefetch);

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

msa_status_t msa_store_stats(const msa_store_t* store, msa_stats_t* out);

#ifdef __cplusplus
}
#endif

#endif /* MSA_H_ */
