// The C API (include/msa.h) over msa::Store. Nothing crosses this boundary
// but status codes: every entry point catches every exception (FAISS's
// c_api/macros_impl.h pattern) and records a thread-local message.
#include "msa.h"

#include <cstdlib>
#include <cstring>
#include <exception>
#include <future>
#include <memory>
#include <new>
#include <string>
#include <type_traits>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "attention/sparse_attention_cuda.h"
#include "store/log_level.h"
#include "store/store.h"

struct msa_store_t {
  std::unique_ptr<msa::Store> store;
};

struct msa_prefetch_t {
  std::shared_future<msa::Status> done;
};

namespace {

// The message of the calling thread's last failure. Storing it may itself
// fail (out of memory); then `fixed_error` points at a static message.
thread_local std::string last_error;
thread_local const char* fixed_error = nullptr;

msa_status_t Fail(msa_status_t code, const char* prefix, const char* detail) noexcept {
  try {
    last_error.assign(prefix);
    last_error.append(detail);
    fixed_error = nullptr;
  } catch (...) {
    fixed_error = *prefix != '\0' ? prefix : "out of memory while reporting an error";
  }
  return code;
}

msa_status_t Report(const msa::Status& s) {
  if (s.ok()) return MSA_OK;
  return Fail(static_cast<msa_status_t>(s.code()), "", s.ToString().c_str());
}

// Runs fn, converting exceptions to MSA_INTERNAL (or MSA_IO_ERROR for OOM).
// The handlers allocate nothing that could throw out of them.
template <typename Fn>
msa_status_t Guard(Fn&& fn) noexcept {
  last_error.clear();
  fixed_error = nullptr;
  try {
    return Report(fn());
  } catch (const std::bad_alloc&) {
    return Fail(MSA_IO_ERROR, "out of memory", "");
  } catch (const std::exception& e) {
    return Fail(MSA_INTERNAL, "internal error: ", e.what());
  } catch (...) {
    return Fail(MSA_INTERNAL, "internal error: unknown exception", "");
  }
}

// The integer a C caller put in an enum argument or field. C allows any int
// there, but in C++ reading an enum object whose value lies outside its
// enumerators' range is undefined (UBSan: "load of value 7, which is not a
// valid value for type 'msa_dtype_t'"; found by tests/fuzz/fuzz_c_api.cc).
// So enums that come from the caller are read as their bytes and checked as
// integers before anything converts them.
template <typename Enum>
int64_t EnumValue(const Enum& e) {
  std::underlying_type_t<Enum> v;
  static_assert(sizeof v == sizeof e);
  std::memcpy(&v, &e, sizeof v);
  return static_cast<int64_t>(v);
}

#define MSA_REQUIRE(cond, message) \
  if (!(cond)) return msa::Status::InvalidArgument(message)

// The C API's logging (msa.h, msa_set_log_level), set up when the library is
// loaded, before any call (the CLI, which does not use the C API, sets its
// own in main()):
//   - warnings and errors only, unless MSA_LOG_LEVEL says otherwise, so that
//     a host program sees nothing on the happy path (Store logs an info line
//     per open);
//   - to stderr: spdlog's own default logger writes to stdout, which is the
//     host's (a pipe of data, a notebook's output). Only that untouched
//     default is replaced; a logger the host installed is left alone.
const bool logging_set_up = [] {
  try {
    const std::shared_ptr<spdlog::logger> current = spdlog::default_logger();
    if (current != nullptr && current->name().empty() && current->sinks().size() == 1 &&
        dynamic_cast<spdlog::sinks::stdout_color_sink_mt*>(current->sinks()[0].get()) != nullptr) {
      spdlog::set_default_logger(spdlog::stderr_color_mt("msa"));
    }
    msa::SetLogLevelFromEnvironment();
  } catch (...) {
    // Logging set-up must not keep the library from loading.
  }
  return true;
}();

}  // namespace

extern "C" {

uint32_t msa_version(void) { return MSA_VERSION; }

msa_status_t msa_set_log_level(int level) {
  return Guard([&]() -> msa::Status {
    MSA_REQUIRE(level >= MSA_LOG_TRACE && level <= MSA_LOG_OFF && level != 5,
                "msa_set_log_level: level " + std::to_string(level) + " is not an msa_log_level_t");
    static_assert(int{MSA_LOG_TRACE} == spdlog::level::trace && int{MSA_LOG_DEBUG} == spdlog::level::debug &&
                  int{MSA_LOG_INFO} == spdlog::level::info && int{MSA_LOG_WARN} == spdlog::level::warn &&
                  int{MSA_LOG_ERROR} == spdlog::level::err && int{MSA_LOG_OFF} == spdlog::level::off);
    spdlog::set_level(static_cast<spdlog::level::level_enum>(level));
    return msa::Status::OK();
  });
}

msa_geometry_t msa_geometry_default_params(void) {
  const msa::Geometry g;
  msa_geometry_t out;
  std::memset(&out, 0, sizeof out);
  out.block_tokens = g.block_tokens;
  out.codec = static_cast<msa_codec_t>(g.codec);
  out.summary = static_cast<msa_summary_t>(g.summary);
  out.summary_centroids = g.summary_centroids;
  return out;
}

const char* msa_last_error(void) { return fixed_error != nullptr ? fixed_error : last_error.c_str(); }

msa_status_t msa_store_create(const char* path, const msa_geometry_t* geometry, msa_store_t** out) {
  return Guard([&]() -> msa::Status {
    MSA_REQUIRE(out != nullptr, "msa_store_create: out is NULL");
    *out = nullptr;
    MSA_REQUIRE(path != nullptr, "msa_store_create: path is NULL");
    MSA_REQUIRE(geometry != nullptr, "msa_store_create: geometry is NULL");
    msa::Geometry g;
    g.layers = geometry->layers;
    g.kv_heads = geometry->kv_heads;
    g.head_dim = geometry->head_dim;
    g.block_tokens = geometry->block_tokens == 0 ? 64 : geometry->block_tokens;
    // Geometry::Validate refuses values that name no codec or summary kind;
    // one that does not even fit their byte is refused here.
    const int64_t codec = EnumValue(geometry->codec), summary = EnumValue(geometry->summary);
    MSA_REQUIRE(codec >= 0 && codec <= 0xff,
                "msa_store_create: geometry->codec " + std::to_string(codec) + " is unknown");
    MSA_REQUIRE(summary >= 0 && summary <= 0xff,
                "msa_store_create: geometry->summary " + std::to_string(summary) + " is unknown");
    g.codec = codec == 0 ? msa::Codec::kF16ShuffleZstd : static_cast<msa::Codec>(codec);
    g.summary = summary == 0 ? msa::Geometry{}.summary : static_cast<msa::SummaryKind>(summary);
    g.summary_centroids = geometry->summary_centroids == 0 ? 4 : geometry->summary_centroids;
    MSA_ASSIGN_OR_RETURN(auto store, msa::Store::Create(path, g));
    *out = new msa_store_t{std::move(store)};
    return msa::Status::OK();
  });
}

msa_status_t msa_store_open(const char* path, int read_only, msa_store_t** out) {
  return Guard([&]() -> msa::Status {
    MSA_REQUIRE(out != nullptr, "msa_store_open: out is NULL");
    *out = nullptr;
    MSA_REQUIRE(path != nullptr, "msa_store_open: path is NULL");
    msa::StoreOptions options;
    options.read_only = read_only != 0;
    MSA_ASSIGN_OR_RETURN(auto store, msa::Store::Open(path, options));
    *out = new msa_store_t{std::move(store)};
    return msa::Status::OK();
  });
}

msa_open_params_t msa_open_default_params(void) {
  const msa::StoreOptions defaults;
  msa_open_params_t p{};
  p.read_only = 0;
  p.queue_depth = defaults.queue_depth;
  p.cache_bytes = defaults.cache_bytes;
  p.gpu_pool_bytes = defaults.gpu_pool_bytes;
  p.allow_io_uring = defaults.allow_io_uring ? 1 : 0;
  return p;
}

msa_status_t msa_store_open_with(const char* path, const msa_open_params_t* params, msa_store_t** out) {
  return Guard([&]() -> msa::Status {
    MSA_REQUIRE(out != nullptr, "msa_store_open_with: out is NULL");
    *out = nullptr;
    MSA_REQUIRE(path != nullptr, "msa_store_open_with: path is NULL");
    const msa_open_params_t p = params ? *params : msa_open_default_params();
    MSA_REQUIRE(p.queue_depth >= 1 && p.queue_depth <= 4096,
                "msa_store_open_with: params->queue_depth is " + std::to_string(p.queue_depth) +
                    "; it must be 1 to 4096");
    MSA_REQUIRE(p.query_threads <= 256, "msa_store_open_with: params->query_threads is " +
                                            std::to_string(p.query_threads) + "; it must be 0 (the default) to 256");
    MSA_REQUIRE(p.reserved[0] == 0 && p.reserved[1] == 0 && p.reserved[2] == 0 && p.reserved[3] == 0,
                "msa_store_open_with: params' reserved fields must be 0 (start from msa_open_default_params())");
    msa::StoreOptions options;
    options.read_only = p.read_only != 0;
    options.queue_depth = p.queue_depth;
    options.cache_bytes = p.cache_bytes;
    options.gpu_pool_bytes = p.gpu_pool_bytes;
    options.allow_io_uring = p.allow_io_uring != 0;
    if (p.query_threads != 0) options.router.scan_threads = p.query_threads - 1;  // the caller is one
    MSA_ASSIGN_OR_RETURN(auto store, msa::Store::Open(path, options));
    *out = new msa_store_t{std::move(store)};
    return msa::Status::OK();
  });
}

void msa_store_close(msa_store_t* store) {
  try {
    delete store;
  } catch (...) {
    // A destructor that throws has nowhere to report to; keep the promise not to.
  }
}

msa_status_t msa_store_geometry(const msa_store_t* store, msa_geometry_t* out) {
  return Guard([&]() -> msa::Status {
    MSA_REQUIRE(store != nullptr, "msa_store_geometry: store is NULL");
    MSA_REQUIRE(out != nullptr, "msa_store_geometry: out is NULL");
    const msa::Geometry& g = store->store->geometry();
    *out = msa_geometry_t{g.layers, g.kv_heads, g.head_dim, g.block_tokens,
                          static_cast<msa_codec_t>(g.codec),
                          static_cast<msa_summary_t>(g.summary), g.summary_centroids};
    return msa::Status::OK();
  });
}

msa_status_t msa_append_document(msa_store_t* store, const char* name, const void* keys,
                                 const void* values, uint64_t tokens, msa_dtype_t dtype,
                                 uint64_t* doc_id) {
  return Guard([&]() -> msa::Status {
    MSA_REQUIRE(store != nullptr, "msa_append_document: store is NULL");
    MSA_REQUIRE(name != nullptr, "msa_append_document: name is NULL");
    MSA_REQUIRE(keys != nullptr, "msa_append_document: keys is NULL");
    MSA_REQUIRE(values != nullptr, "msa_append_document: values is NULL");
    const int64_t type = EnumValue(dtype);
    MSA_REQUIRE(type == MSA_FLOAT32 || type == MSA_FLOAT16 || type == MSA_BFLOAT16,
                "msa_append_document: dtype " + std::to_string(type) + " is unknown");
    msa::DocumentKV kv{keys, values, tokens,
                       type == MSA_FLOAT16    ? msa::ElementType::kFloat16
                       : type == MSA_BFLOAT16 ? msa::ElementType::kBFloat16
                                              : msa::ElementType::kFloat32};
    MSA_ASSIGN_OR_RETURN(const uint64_t id, store->store->AppendDocument(name, kv));
    if (doc_id != nullptr) *doc_id = id;
    return msa::Status::OK();
  });
}

msa_status_t msa_commit(msa_store_t* store) {
  return Guard([&]() -> msa::Status {
    MSA_REQUIRE(store != nullptr, "msa_commit: store is NULL");
    return store->store->Commit();
  });
}

msa_status_t msa_delete_document(msa_store_t* store, uint64_t doc_id) {
  return Guard([&]() -> msa::Status {
    MSA_REQUIRE(store != nullptr, "msa_delete_document: store is NULL");
    return store->store->DeleteDocument(doc_id).WithContext("msa_delete_document");
  });
}

msa_status_t msa_compact(msa_store_t* store, msa_compact_stats_t* stats) {
  return Guard([&]() -> msa::Status {
    MSA_REQUIRE(store != nullptr, "msa_compact: store is NULL");
    msa::CompactStats cs;
    MSA_RETURN_IF_ERROR(store->store->Compact(&cs).WithContext("msa_compact"));
    if (stats != nullptr) {
      *stats = msa_compact_stats_t{cs.segments_removed, cs.bytes_reclaimed, cs.blocks_moved,
                                   cs.blocks_dropped};
    }
    return msa::Status::OK();
  });
}

msa_status_t msa_list_documents(const msa_store_t* store, msa_document_t** documents,
                                size_t* count) {
  return Guard([&]() -> msa::Status {
    MSA_REQUIRE(documents != nullptr, "msa_list_documents: documents is NULL");
    *documents = nullptr;
    MSA_REQUIRE(count != nullptr, "msa_list_documents: count is NULL");
    *count = 0;
    MSA_REQUIRE(store != nullptr, "msa_list_documents: store is NULL");
    MSA_ASSIGN_OR_RETURN(const auto docs, store->store->ListDocuments());
    if (docs.empty()) return msa::Status::OK();
    // One allocation: the entries, then their names, so one free releases all
    // and the caller cannot free a name on its own.
    size_t bytes = docs.size() * sizeof(msa_document_t);
    for (const msa::DocumentRecord& d : docs) bytes += d.name.size() + 1;
    auto* block = static_cast<char*>(std::malloc(bytes));
    if (block == nullptr) throw std::bad_alloc();
    auto* entries = reinterpret_cast<msa_document_t*>(block);
    char* names = block + docs.size() * sizeof(msa_document_t);
    for (size_t i = 0; i < docs.size(); ++i) {
      const msa::DocumentRecord& d = docs[i];
      std::memcpy(names, d.name.c_str(), d.name.size() + 1);
      entries[i] = msa_document_t{d.id, names, d.tokens, d.first_block, d.blocks};
      names += d.name.size() + 1;
    }
    *documents = entries;
    *count = docs.size();
    return msa::Status::OK();
  });
}

void msa_documents_free(msa_document_t* documents) { std::free(documents); }

msa_attend_params_t msa_attend_default_params(void) {
  msa_attend_params_t p;
  p.top_k = msa::AttendOptions{}.top_k;
  p.exact = 0;
  p.gqa_combine = MSA_GQA_MAX;
  p.nprobe = 0;
  p.candidates = 0;
  p.exact_routing = 0;
  p.channels = 0;
  p.gpu = MSA_GPU_AUTO;
  p.documents = nullptr;
  p.n_documents = 0;
  p.document_sinks = 0;
  return p;
}

// The attend params as AttendOptions; `fn` names the entry point in errors.
msa::Result<msa::AttendOptions> ToOptions(const msa_attend_params_t* params, const char* fn) {
  const msa_attend_params_t p = params ? *params : msa_attend_default_params();
  msa::AttendOptions options;
  options.top_k = p.top_k;
  options.exact = p.exact != 0;
  const int64_t combine = EnumValue(p.gqa_combine);
  MSA_REQUIRE(combine == MSA_GQA_MAX || combine == MSA_GQA_SUM,
              std::string(fn) + ": params->gqa_combine must be MSA_GQA_MAX or MSA_GQA_SUM");
  options.combine = combine == MSA_GQA_SUM ? msa::GqaCombine::kSum : msa::GqaCombine::kMax;
  options.nprobe = p.nprobe;
  options.candidates = p.candidates;
  options.exact_routing = p.exact_routing != 0;
  options.channels = p.channels;
  MSA_REQUIRE(p.documents != nullptr || p.n_documents == 0,
              std::string(fn) + ": params->documents is NULL but n_documents is " + std::to_string(p.n_documents));
  if (p.n_documents > 0) options.documents.assign(p.documents, p.documents + p.n_documents);
  options.document_sinks = p.document_sinks != 0;
  const int64_t gpu = EnumValue(p.gpu);
  MSA_REQUIRE(gpu == MSA_GPU_AUTO || gpu == MSA_GPU_OFF || gpu == MSA_GPU_REQUIRE,
              std::string(fn) + ": params->gpu must be MSA_GPU_AUTO, MSA_GPU_OFF or MSA_GPU_REQUIRE");
  options.gpu = gpu == MSA_GPU_OFF ? msa::GpuMode::kOff
                : gpu == MSA_GPU_REQUIRE ? msa::GpuMode::kRequire : msa::GpuMode::kAuto;
  return options;
}

msa_status_t msa_attend(const msa_store_t* store, uint32_t layer, const float* q, uint32_t n,
                        uint32_t q_heads, const msa_attend_params_t* params, float* out,
                        float* lse) {
  return Guard([&]() -> msa::Status {
    MSA_REQUIRE(store != nullptr, "msa_attend: store is NULL");
    MSA_REQUIRE(q != nullptr || n == 0, "msa_attend: q is NULL");
    MSA_REQUIRE(out != nullptr || n == 0, "msa_attend: out is NULL");
    MSA_ASSIGN_OR_RETURN(const msa::AttendOptions options, ToOptions(params, "msa_attend"));
    return store->store->Attend(layer, q, n, q_heads, options, out, lse);
  });
}

msa_status_t msa_attend_device(const msa_store_t* store, uint32_t layer, const float* q, uint32_t n,
                               uint32_t q_heads, const msa_attend_params_t* params, float* out, float* lse,
                               void* cuda_stream) {
  return Guard([&]() -> msa::Status {
    MSA_REQUIRE(store != nullptr, "msa_attend_device: store is NULL");
    MSA_REQUIRE(q != nullptr || n == 0, "msa_attend_device: q is NULL");
    MSA_REQUIRE(out != nullptr || n == 0, "msa_attend_device: out is NULL");
    MSA_ASSIGN_OR_RETURN(const msa::AttendOptions options, ToOptions(params, "msa_attend_device"));
    return store->store->AttendDevice(layer, q, n, q_heads, options, out, lse, cuda_stream)
        .WithContext("msa_attend_device");
  });
}

int msa_gpu_available(const char** why) {
  // The reason is computed once: the answer does not change within a process.
  static const std::string* reason = [] {
    std::string w;
    try {
      return new std::string(msa::attention::CudaAvailable(&w) ? std::string() : w);
    } catch (...) {
      return static_cast<std::string*>(nullptr);
    }
  }();
  const char* text = reason ? reason->c_str() : "out of memory";
  if (why != nullptr) *why = text;
  return reason != nullptr && reason->empty() ? 1 : 0;
}

msa_status_t msa_prefetch(const msa_store_t* store, uint32_t layer, const float* q, uint32_t n,
                          uint32_t q_heads, const msa_attend_params_t* params, msa_prefetch_t** out) {
  return Guard([&]() -> msa::Status {
    MSA_REQUIRE(out != nullptr, "msa_prefetch: out is NULL");
    *out = nullptr;
    MSA_REQUIRE(store != nullptr, "msa_prefetch: store is NULL");
    MSA_REQUIRE(q != nullptr || n == 0, "msa_prefetch: q is NULL");
    MSA_ASSIGN_OR_RETURN(const msa::AttendOptions options, ToOptions(params, "msa_prefetch"));
    *out = new msa_prefetch_t{store->store->Prefetch(layer, q, n, q_heads, options)};
    return msa::Status::OK();
  });
}

msa_status_t msa_prefetch_layers(const msa_store_t* store, const msa_layer_queries_t* layers,
                                 uint32_t n_layers, uint32_t q_heads, const msa_attend_params_t* params,
                                 msa_prefetch_t** out) {
  return Guard([&]() -> msa::Status {
    MSA_REQUIRE(out != nullptr, "msa_prefetch_layers: out is NULL");
    *out = nullptr;
    MSA_REQUIRE(store != nullptr, "msa_prefetch_layers: store is NULL");
    MSA_REQUIRE(layers != nullptr || n_layers == 0, "msa_prefetch_layers: layers is NULL");
    MSA_ASSIGN_OR_RETURN(const msa::AttendOptions options, ToOptions(params, "msa_prefetch_layers"));
    std::vector<msa::Store::LayerQueries> all(n_layers);
    for (uint32_t i = 0; i < n_layers; ++i) all[i] = {layers[i].layer, layers[i].q, layers[i].n};
    *out = new msa_prefetch_t{store->store->PrefetchLayers(all, q_heads, options)};
    return msa::Status::OK();
  });
}

msa_status_t msa_prefetch_wait(msa_prefetch_t* prefetch) {
  return Guard([&]() -> msa::Status {
    MSA_REQUIRE(prefetch != nullptr, "msa_prefetch_wait: prefetch is NULL");
    return prefetch->done.get();
  });
}

void msa_prefetch_free(msa_prefetch_t* prefetch) {
  if (prefetch == nullptr) return;
  try {
    prefetch->done.wait();
  } catch (...) {
  }
  delete prefetch;
}

msa_status_t msa_store_stats(const msa_store_t* store, msa_stats_t* out) {
  return Guard([&]() -> msa::Status {
    MSA_REQUIRE(store != nullptr, "msa_store_stats: store is NULL");
    MSA_REQUIRE(out != nullptr, "msa_store_stats: out is NULL");
    const msa::StoreStats s = store->store->Stats();
    *out = msa_stats_t{s.documents,        s.tokens,          s.blocks_per_stream,
                       s.stored_bytes,     s.raw_bytes,       s.cache.capacity_bytes,
                       s.cache.used_bytes, s.cache.hits,      s.cache.misses};
    return msa::Status::OK();
  });
}

msa_status_t msa_store_fetch_stats(const msa_store_t* store, msa_fetch_stats_t* out) {
  return Guard([&]() -> msa::Status {
    MSA_REQUIRE(store != nullptr, "msa_store_fetch_stats: store is NULL");
    MSA_REQUIRE(out != nullptr, "msa_store_fetch_stats: out is NULL");
    const msa::StoreStats s = store->store->Stats();
    msa_fetch_stats_t f{};
    f.cache_capacity_bytes = s.cache.capacity_bytes;
    f.cache_resident_bytes = s.cache.used_bytes;
    f.cache_entries = s.cache.entries;
    f.cache_hits = s.cache.hits;
    f.cache_misses = s.cache.misses;
    f.cache_hit_bytes = s.cache.hit_bytes;
    f.cache_evictions = s.cache.evictions;
    f.disk_blocks_read = s.disk_blocks_read;
    f.disk_bytes_read = s.disk_bytes_read;
    f.reader = s.reader == "io_uring" ? MSA_READER_IO_URING : MSA_READER_PREAD;
    *out = f;
    return msa::Status::OK();
  });
}

}  // extern "C"
