/* The C API used from C: create, append, commit, close, reopen, attend,
 * stats, and errors as codes with messages. Exit 0 on success. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "msa.h"

#define CHECK(cond)                                                              \
  do {                                                                           \
    if (!(cond)) {                                                               \
      fprintf(stderr, "%s:%d: check failed: %s (%s)\n", __FILE__, __LINE__, #cond, \
              msa_last_error());                                                 \
      return 1;                                                                  \
    }                                                                            \
  } while (0)

int main(int argc, char** argv) {
  const char* path = argc > 1 ? argv[1] : "c_api_store";
  char cmd[1024];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", path);
  if (system(cmd) != 0) return 1;
  /* The library is the one this header describes: same major and minor
   * (a minor bump adds functions, so a mismatch means a stale libmsa). */
  CHECK(msa_version() >> 16 == MSA_VERSION_MAJOR);
  CHECK(((msa_version() >> 8) & 0xff) == MSA_VERSION_MINOR);
  CHECK(msa_version() == MSA_VERSION);
  CHECK(msa_set_log_level(MSA_LOG_WARN) == MSA_OK);
  CHECK(msa_set_log_level(5) == MSA_INVALID_ARGUMENT);
  CHECK(strstr(msa_last_error(), "level 5") != NULL);
  CHECK(msa_set_log_level(-1) == MSA_INVALID_ARGUMENT);

  const msa_geometry_t defaults = msa_geometry_default_params();
  CHECK(defaults.layers == 0 && defaults.kv_heads == 0 && defaults.head_dim == 0);
  CHECK(defaults.block_tokens == 64 && defaults.codec == MSA_CODEC_F16 &&
        defaults.summary == MSA_SUMMARY_HYBRID && defaults.summary_centroids == 4);

  msa_geometry_t g = {1, 2, 8, 4, MSA_CODEC_F16, MSA_SUMMARY_BOUND, 0};
  msa_store_t* store = NULL;
  CHECK(msa_store_create(path, &g, &store) == MSA_OK);
  enum { T = 10, D = 8, KV = 2, QH = 4 };
  float keys[KV * T * D], values[KV * T * D];
  for (int i = 0; i < KV * T * D; ++i) {
    keys[i] = (float)((i * 37) % 17) / 16.0f - 0.5f;
    values[i] = (float)((i * 11) % 13) / 8.0f;
  }
  uint64_t id = 0;
  msa_document_t* docs = (msa_document_t*)1;
  size_t n_docs = 99;
  CHECK(msa_list_documents(store, &docs, &n_docs) == MSA_OK); /* empty: NULL, 0 */
  CHECK(docs == NULL && n_docs == 0);
  msa_documents_free(docs);
  CHECK(msa_append_document(store, "doc", keys, values, T, MSA_FLOAT32, &id) == MSA_OK);
  CHECK(msa_append_document(store, "doc", keys, values, T, MSA_FLOAT32, &id) == MSA_ALREADY_EXISTS);
  CHECK(strstr(msa_last_error(), "doc") != NULL);
  CHECK(msa_list_documents(store, &docs, &n_docs) == MSA_OK); /* staged: not listed */
  CHECK(n_docs == 0);
  CHECK(msa_commit(store) == MSA_OK);
  uint64_t id2 = 0;
  CHECK(msa_append_document(store, "second document", keys, values, 5, MSA_FLOAT32, &id2) == MSA_OK);
  CHECK(msa_commit(store) == MSA_OK);
  CHECK(msa_list_documents(store, &docs, &n_docs) == MSA_OK);
  CHECK(n_docs == 2 && docs != NULL);
  CHECK(docs[0].id == id && strcmp(docs[0].name, "doc") == 0 && docs[0].tokens == T &&
        docs[0].first_block == 0 && docs[0].blocks == 3);
  CHECK(docs[1].id == id2 && strcmp(docs[1].name, "second document") == 0 &&
        docs[1].tokens == 5 && docs[1].first_block == 3 && docs[1].blocks == 2);
  msa_documents_free(docs);
  msa_documents_free(NULL); /* a no-op */
  CHECK(msa_list_documents(store, NULL, &n_docs) == MSA_INVALID_ARGUMENT);
  CHECK(msa_list_documents(store, &docs, NULL) == MSA_INVALID_ARGUMENT);
  CHECK(docs == NULL);
  CHECK(msa_list_documents(NULL, &docs, &n_docs) == MSA_INVALID_ARGUMENT);
  msa_store_close(store);
  msa_store_close(NULL); /* a no-op */

  CHECK(msa_store_open(path, 1, &store) == MSA_OK);
  msa_stats_t stats;
  CHECK(msa_store_stats(store, &stats) == MSA_OK);
  CHECK(stats.documents == 2 && stats.tokens == T + 5 && stats.blocks_per_stream == 5);
  msa_geometry_t stored;
  CHECK(msa_store_geometry(store, &stored) == MSA_OK);
  CHECK(stored.summary == MSA_SUMMARY_BOUND && stored.summary_centroids == 4);

  float q[QH * D], out[QH * D], lse[QH];
  for (int i = 0; i < QH * D; ++i) q[i] = (float)(i % 5) / 5.0f;
  msa_attend_params_t params = msa_attend_default_params();
  CHECK(params.document_sinks == 0); /* off by default (since 0.7) */
  params.exact = 1;
  CHECK(msa_attend(store, 0, q, 1, QH, &params, out, lse) == MSA_OK);
  for (int i = 0; i < QH; ++i) CHECK(isfinite(lse[i]));
  /* An output row is a convex combination of values: inside their range. */
  for (int i = 0; i < QH * D; ++i) CHECK(out[i] >= 0.0f && out[i] <= 2.0f);

  /* Errors are codes with a message, never a crash. */
  CHECK(msa_attend(store, 5, q, 1, QH, &params, out, lse) == MSA_INVALID_ARGUMENT);
  CHECK(strstr(msa_last_error(), "layer 5") != NULL);
  CHECK(msa_attend(store, 0, q, 1, 3, &params, out, lse) == MSA_INVALID_ARGUMENT);
  CHECK(msa_attend(NULL, 0, q, 1, QH, &params, out, lse) == MSA_INVALID_ARGUMENT);
  params.exact = 0;
  params.top_k = 1;
  params.gqa_combine = MSA_GQA_SUM;
  CHECK(msa_attend(store, 0, q, 1, QH, &params, out, lse) == MSA_OK);
  params.document_sinks = 1; /* accepted; its routing is tested in store_test.cc */
  CHECK(msa_attend(store, 0, q, 1, QH, &params, out, lse) == MSA_OK);
  params.document_sinks = 0;
  /* Prefetch, then attend from the host cache (on the CPU: a GPU call's
   * prefetch fills the GPU pool instead, which the host counters don't see). */
  params.gpu = MSA_GPU_OFF;
  msa_prefetch_t* pf = NULL;
  CHECK(msa_prefetch(store, 0, q, 1, QH, &params, &pf) == MSA_OK);
  CHECK(msa_prefetch_wait(pf) == MSA_OK);
  msa_prefetch_free(pf);
  CHECK(msa_attend(store, 0, q, 1, QH, &params, out, lse) == MSA_OK);
  CHECK(msa_store_stats(store, &stats) == MSA_OK);
  CHECK(stats.cache_hits > 0 && stats.cache_capacity_bytes > 0);
  {
    msa_fetch_stats_t fetch;
    memset(&fetch, 0xff, sizeof fetch);
    CHECK(msa_store_fetch_stats(store, &fetch) == MSA_OK);
    CHECK(fetch.cache_hits == stats.cache_hits && fetch.cache_misses == stats.cache_misses);
    CHECK(fetch.cache_capacity_bytes == stats.cache_capacity_bytes);
    CHECK(fetch.cache_resident_bytes > 0 && fetch.cache_entries > 0 && fetch.cache_hit_bytes > 0);
    CHECK(fetch.disk_blocks_read > 0 && fetch.disk_bytes_read >= 4096 * fetch.disk_blocks_read);
    CHECK(fetch.reader == MSA_READER_IO_URING || fetch.reader == MSA_READER_PREAD);
    CHECK(fetch.reserved32 == 0 && fetch.reserved[0] == 0 && fetch.reserved[5] == 0);
    CHECK(msa_store_fetch_stats(store, NULL) == MSA_INVALID_ARGUMENT);
    CHECK(msa_store_fetch_stats(NULL, &fetch) == MSA_INVALID_ARGUMENT);
  }
  {
    /* Both layers' blocks (here the one layer twice) in one batch. */
    const msa_layer_queries_t layers[2] = {{0, 1, q}, {0, 1, q}};
    CHECK(msa_prefetch_layers(store, layers, 2, QH, &params, &pf) == MSA_OK);
    CHECK(msa_prefetch_wait(pf) == MSA_OK);
    msa_prefetch_free(pf);
    const msa_layer_queries_t bad[1] = {{9, 1, q}};
    CHECK(msa_prefetch_layers(store, bad, 1, QH, &params, &pf) == MSA_OK);
    CHECK(msa_prefetch_wait(pf) == MSA_INVALID_ARGUMENT);
    CHECK(strstr(msa_last_error(), "layer 9") != NULL);
    msa_prefetch_free(pf);
    CHECK(msa_prefetch_layers(store, NULL, 1, QH, &params, &pf) == MSA_INVALID_ARGUMENT);
  }
  CHECK(msa_prefetch(store, 9, q, 1, QH, &params, &pf) == MSA_OK); /* errors arrive at the wait */
  CHECK(msa_prefetch_wait(pf) == MSA_INVALID_ARGUMENT);
  CHECK(strstr(msa_last_error(), "layer 9") != NULL);
  msa_prefetch_free(pf);
  msa_prefetch_free(NULL);
  /* Restricted to the one document (by id), then to an unknown one. */
  params.gqa_combine = MSA_GQA_MAX;
  params.documents = &id;
  params.n_documents = 1;
  CHECK(msa_attend(store, 0, q, 1, QH, &params, out, lse) == MSA_OK);
  uint64_t unknown = id + 100;
  params.documents = &unknown;
  CHECK(msa_attend(store, 0, q, 1, QH, &params, out, lse) == MSA_NOT_FOUND);
  params.documents = NULL;
  CHECK(msa_attend(store, 0, q, 1, QH, &params, out, lse) == MSA_INVALID_ARGUMENT);
  params.n_documents = 0;
  params.gqa_combine = (msa_gqa_combine_t)7;
  CHECK(msa_attend(store, 0, q, 1, QH, &params, out, lse) == MSA_INVALID_ARGUMENT);
  CHECK(strstr(msa_last_error(), "gqa_combine") != NULL);
  params.gqa_combine = MSA_GQA_MAX;
  /* Where to compute: an unknown mode is refused; off is always the CPU;
   * require and the device entry point need a GPU (and say why without one). */
  params.gpu = (msa_gpu_t)9;
  CHECK(msa_attend(store, 0, q, 1, QH, &params, out, lse) == MSA_INVALID_ARGUMENT);
  CHECK(strstr(msa_last_error(), "gpu") != NULL);
  params.gpu = MSA_GPU_OFF;
  CHECK(msa_attend(store, 0, q, 1, QH, &params, out, lse) == MSA_OK);
  const char* why = NULL;
  const int have_gpu = msa_gpu_available(&why);
  CHECK(why != NULL && (have_gpu ? why[0] == '\0' : why[0] != '\0'));
  CHECK(msa_gpu_available(NULL) == have_gpu);
  params.gpu = MSA_GPU_REQUIRE;
  CHECK(msa_attend(store, 0, q, 1, QH, &params, out, lse) == (have_gpu ? MSA_OK : MSA_NOT_SUPPORTED));
  if (!have_gpu) {
    CHECK(msa_attend_device(store, 0, q, 1, QH, &params, out, lse, NULL) == MSA_NOT_SUPPORTED);
    CHECK(strstr(msa_last_error(), "msa_attend_device") != NULL);
  }
  CHECK(msa_attend_device(NULL, 0, q, 1, QH, &params, out, lse, NULL) == MSA_INVALID_ARGUMENT);
  params.gpu = MSA_GPU_AUTO;
  CHECK(msa_append_document(store, "x", keys, values, T, MSA_FLOAT32, NULL) == MSA_INVALID_ARGUMENT);
  msa_store_close(store);
  CHECK(msa_store_open("/nonexistent/msa", 0, &store) == MSA_NOT_FOUND);
  CHECK(store == NULL);
  {
    /* Opened with params: a 1 MiB cache, which the stats report. */
    msa_open_params_t op = msa_open_default_params();
    CHECK(op.queue_depth == 256 && op.cache_bytes == 256u << 20 && op.allow_io_uring == 1 && op.read_only == 0 &&
          op.query_threads == 0);
    op.read_only = 1;
    op.cache_bytes = 1u << 20;
    CHECK(msa_store_open_with(path, &op, &store) == MSA_OK);
    CHECK(msa_store_stats(store, &stats) == MSA_OK);
    CHECK(stats.cache_capacity_bytes == 1u << 20 && stats.documents == 2);
    msa_store_close(store);
    op.queue_depth = 0;
    CHECK(msa_store_open_with(path, &op, &store) == MSA_INVALID_ARGUMENT);
    CHECK(store == NULL && strstr(msa_last_error(), "queue_depth") != NULL);
    op.queue_depth = 256;
    op.query_threads = 257;
    CHECK(msa_store_open_with(path, &op, &store) == MSA_INVALID_ARGUMENT);
    CHECK(store == NULL && strstr(msa_last_error(), "query_threads") != NULL);
    op.query_threads = 1; /* the caller's thread alone */
    CHECK(msa_store_open_with(path, &op, &store) == MSA_OK);
    msa_store_close(store);
    op.query_threads = 0;
    op.reserved[2] = 1;
    CHECK(msa_store_open_with(path, &op, &store) == MSA_INVALID_ARGUMENT);
    CHECK(msa_store_open_with(path, NULL, &store) == MSA_OK); /* the defaults */
    msa_store_close(store);
    CHECK(msa_store_open_with(NULL, NULL, &store) == MSA_INVALID_ARGUMENT);
  }
  /* A store holds its preallocated segment (64 MiB of disk): leave none behind
   * (a failed check above keeps it, to look at). */
  if (system(cmd) != 0) return 1;
  printf("c_api_test: OK\n");
  return 0;
}
