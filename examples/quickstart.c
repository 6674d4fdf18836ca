/* The C API in one page: create a store, add a document, commit, reopen,
 * attend. Exits 0 on success. tests/ builds and runs it; README shows it. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "msa.h"

#define CHECK(call)                                                               \
  do {                                                                            \
    msa_status_t status_ = (call);                                                \
    if (status_ != MSA_OK) {                                                      \
      fprintf(stderr, "%s: error %d: %s\n", #call, (int)status_, msa_last_error()); \
      return 1;                                                                   \
    }                                                                             \
  } while (0)

enum { LAYERS = 1, KV_HEADS = 2, HEAD_DIM = 64, TOKENS = 300, Q_HEADS = 8 };

int main(int argc, char** argv) {
  const char* path = argc > 1 ? argv[1] : "quickstart-store";
  if (msa_version() >> 16 != MSA_VERSION_MAJOR) {
    fprintf(stderr, "libmsa %#x is not the major version of msa.h %#x\n", msa_version(), MSA_VERSION);
    return 1;
  }

  /* One document's keys and values: [layers, kv_heads, tokens, head_dim]. */
  static float keys[LAYERS * KV_HEADS * TOKENS * HEAD_DIM];
  static float values[LAYERS * KV_HEADS * TOKENS * HEAD_DIM];
  for (int i = 0; i < LAYERS * KV_HEADS * TOKENS * HEAD_DIM; ++i) {
    keys[i] = sinf(0.37f * (float)i);
    values[i] = cosf(0.11f * (float)i);
  }

  msa_geometry_t geometry = msa_geometry_default_params(); /* 64-token blocks, fp16 */
  geometry.layers = LAYERS;
  geometry.kv_heads = KV_HEADS;
  geometry.head_dim = HEAD_DIM;
  msa_store_t* store;
  CHECK(msa_store_create(path, &geometry, &store));
  uint64_t doc;
  CHECK(msa_append_document(store, "doc", keys, values, TOKENS, MSA_FLOAT32, &doc));
  CHECK(msa_commit(store)); /* durable and visible */
  msa_store_close(store);

  CHECK(msa_store_open(path, /*read_only=*/1, &store));
  float q[Q_HEADS * HEAD_DIM], out[Q_HEADS * HEAD_DIM], lse[Q_HEADS]; /* one query row */
  for (int i = 0; i < Q_HEADS * HEAD_DIM; ++i) q[i] = keys[i];
  msa_attend_params_t params = msa_attend_default_params(); /* top_k 16 */
  params.top_k = 2; /* 2 routed blocks per KV head, plus the first and the last */
  CHECK(msa_attend(store, 0, q, 1, Q_HEADS, &params, out, lse));
  msa_stats_t stats;
  CHECK(msa_store_stats(store, &stats));
  printf("document %llu: %llu tokens in %llu blocks per stream; out[0] %.4f, lse[0] %.4f\n",
         (unsigned long long)doc, (unsigned long long)stats.tokens,
         (unsigned long long)stats.blocks_per_stream, out[0], lse[0]);
  msa_store_close(store);
  return isfinite(lse[0]) ? 0 : 1;
}
