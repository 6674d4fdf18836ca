#include "tools/ingest_pipeline.h"

#include <spdlog/spdlog.h>

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <fstream>
#include <mutex>
#include <thread>

#include "tools/progress_line.h"

namespace msa::cli {

namespace {

using Clock = std::chrono::steady_clock;
double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

volatile sig_atomic_t g_stop_signal = 0;
void OnStopSignal(int sig) { g_stop_signal = sig; }

// Installs the graceful-stop handler for the pipeline's lifetime; the
// handler is one-shot (SA_RESETHAND), so a second signal kills.
class StopSignals {
 public:
  explicit StopSignals(bool on) : on_(on) {
    if (!on_) return;
    g_stop_signal = 0;
    struct sigaction sa = {};
    sa.sa_handler = OnStopSignal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND;
    sigaction(SIGINT, &sa, &old_int_);
    sigaction(SIGTERM, &sa, &old_term_);
  }
  ~StopSignals() {
    if (!on_) return;
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
  }
  bool stopped() const { return on_ && g_stop_signal != 0; }

 private:
  bool on_;
  struct sigaction old_int_ = {}, old_term_ = {};
};


}  // namespace

uint64_t PeakRssBytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoull(line.substr(6)) * 1024;  // "VmHWM:  1234 kB"
  }
  return 0;
}

nlohmann::json IngestReport::ToJson() const {
  return {{"documents", documents},
          {"tokens", tokens},
          {"input_bytes", input_bytes},
          {"written_bytes", written_bytes},
          {"commits", commits},
          {"seconds", seconds},
          {"tokens_per_s", seconds > 0 ? tokens / seconds : 0.0},
          {"input_mb_per_s", seconds > 0 ? input_bytes / seconds / 1e6 : 0.0},
          {"written_mb_per_s", seconds > 0 ? written_bytes / seconds / 1e6 : 0.0},
          {"append_s", append_s},
          {"commit_s", commit_s},
          {"wait_for_input_s", wait_s},
          {"peak_rss_bytes", PeakRssBytes()},
          {"interrupted", interrupted}};
}

Status RunIngestPipeline(Store& store, const IngestProducer& producer,
                         const IngestPipelineOptions& options, IngestReport* report) {
  IngestReport local;
  IngestReport& r = report ? *report : local;
  r = IngestReport{};
  const auto t_start = Clock::now();
  const uint64_t segment_bytes_before = store.Stats().segment_bytes;
  StopSignals signals(options.handle_signals);

  // The queue between the producer thread and this (the writer) thread.
  std::mutex mu;
  std::condition_variable changed;
  std::deque<Result<std::optional<IngestItem>>> queue;
  bool quit = false;  // the writer is done: the producer stops
  std::thread thread([&] {
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu);
        changed.wait(lock, [&] { return quit || queue.size() < std::max(1u, options.queue_depth); });
        if (quit) return;
      }
      Result<std::optional<IngestItem>> next = producer();
      const bool last = !next.ok() || !next->has_value();
      {
        std::lock_guard<std::mutex> lock(mu);
        queue.push_back(std::move(next));
      }
      changed.notify_all();
      if (last) return;
    }
  });

  uint32_t staged_docs = 0;
  uint64_t staged_bytes = 0, staged_tokens = 0;
  auto last_progress = Clock::now() - std::chrono::seconds(1);
  const bool progress = options.progress;
  auto show_progress = [&](bool final) {
    if (!progress) return;
    if (!final && Seconds(last_progress) < 0.5) return;
    last_progress = Clock::now();
    const double s = Seconds(t_start);
    const uint64_t tokens = r.tokens + staged_tokens, bytes = r.input_bytes + staged_bytes;
    const double mbs = s > 0 ? bytes / s / 1e6 : 0;
    double eta = -1;
    if (options.expected_tokens > 0 && tokens > 0) {
      eta = s * (static_cast<double>(options.expected_tokens) / tokens - 1);
    } else if (options.expected_bytes > 0 && bytes > 0) {
      eta = s * (static_cast<double>(options.expected_bytes) / bytes - 1);
    }
    char tokens_total[32] = "";
    if (options.expected_tokens) std::snprintf(tokens_total, sizeof(tokens_total), " / %.2fM", options.expected_tokens / 1e6);
    std::fprintf(stderr, "\r\033[Kingest: %llu docs, %.2fM%s tokens, %.0f MB in %s, %.1f MB/s, ETA %s%s",
                 (unsigned long long)(r.documents + staged_docs), tokens / 1e6, tokens_total, bytes / 1e6,
                 FormatDuration(s).c_str(), mbs, eta >= 0 ? FormatDuration(eta).c_str() : "?", final ? "\n" : "");
    std::fflush(stderr);
  };
  auto commit = [&]() -> Status {
    if (staged_docs == 0) return Status::OK();
    const auto t0 = Clock::now();
    Status s = store.Commit();
    r.commit_s += Seconds(t0);
    if (!s.ok()) return s;
    r.commits++;
    r.documents += staged_docs;
    r.tokens += staged_tokens;
    r.input_bytes += staged_bytes;
    staged_docs = 0;
    staged_bytes = staged_tokens = 0;
    return Status::OK();
  };

  Status result;
  for (;;) {
    if (signals.stopped()) {
      result = commit();
      r.interrupted = true;
      break;
    }
    const auto t_wait = Clock::now();
    Result<std::optional<IngestItem>> next = Status::OK();
    {
      std::unique_lock<std::mutex> lock(mu);
      // Wake up now and then to notice a stop signal while the producer is slow.
      while (queue.empty() && !signals.stopped()) changed.wait_for(lock, std::chrono::milliseconds(200));
      if (queue.empty()) continue;  // a signal: handled at the top
      next = std::move(queue.front());
      queue.pop_front();
    }
    changed.notify_all();
    r.wait_s += Seconds(t_wait);
    if (!next.ok()) {
      // A bad input: keep everything before it, then report it.
      Status c = commit();
      result = c.ok() ? next.status() : c;
      break;
    }
    if (!next->has_value()) {
      result = commit();
      break;
    }
    IngestItem& item = **next;
    const auto t0 = Clock::now();
    auto id = store.AppendDocument(item.name, item.kv);
    r.append_s += Seconds(t0);
    if (!id.ok()) {
      result = id.status().WithContext(item.source);
      break;
    }
    item.storage.reset();  // free the input before the next one arrives
    staged_docs++;
    staged_tokens += item.kv.tokens;
    staged_bytes += item.input_bytes;
    if (staged_docs >= options.commit_docs || staged_bytes >= options.commit_bytes) {
      result = commit();
      if (!result.ok()) break;
    }
    show_progress(false);
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    quit = true;
    queue.clear();  // frees what the producer made ahead
  }
  changed.notify_all();
  thread.join();
  if (result.ok() && r.commits > 0) {
    // So that the next open (`msa query` and the like, read-only) replays
    // no log. Optional: a failure loses nothing, so it is only reported.
    const Status flushed = store.FlushCatalog();
    if (!flushed.ok()) spdlog::warn("{}; the next open replays the catalog's log", flushed.ToString());
  }
  r.seconds = Seconds(t_start);
  r.written_bytes = store.Stats().segment_bytes - segment_bytes_before;
  show_progress(true);
  return result;
}

}  // namespace msa::cli
