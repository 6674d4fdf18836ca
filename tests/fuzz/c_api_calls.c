/* Calls from C, for fuzz_c_api.cc: an enum argument holding any int is
 * ordinary C (what a C caller may pass by mistake), while in C++ merely
 * holding such a value in an enum object is undefined. */
#include "msa.h"

msa_status_t fuzz_append_document(msa_store_t* store, const char* name, const void* keys,
                                  const void* values, uint64_t tokens, int dtype,
                                  uint64_t* doc_id) {
  return msa_append_document(store, name, keys, values, tokens, (msa_dtype_t)dtype, doc_id);
}
