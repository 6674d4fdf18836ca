// The progress line of long CLI work (verify, compact; ingest has its own
// with documents and tokens, tools/ingest_pipeline.cc): one line on stderr,
// rewritten at most twice a second, ended with a newline by Finish(). Only
// when stderr is a terminal: in a pipe or a log it would be noise, so
// Enabled() is false there and nothing is written.
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace msa::cli {

// "1m05s", "2h03m"; "?" for a negative or absurd estimate.
inline std::string FormatDuration(double s) {
  char buf[32];
  if (s < 0 || s > 1e7) return "?";
  const long t = static_cast<long>(s + 0.5);
  if (t >= 3600) {
    std::snprintf(buf, sizeof(buf), "%ldh%02ldm", t / 3600, t / 60 % 60);
  } else {
    std::snprintf(buf, sizeof(buf), "%ldm%02lds", t / 60, t % 60);
  }
  return buf;
}

class ProgressLine {
 public:
  // verb: what is going on ("verify"); unit: what `done` counts
  // ("blocks"); bytes: what happened to the bytes counted ("read").
  ProgressLine(std::string verb, std::string unit, std::string bytes = "read")
      : verb_(std::move(verb)),
        unit_(std::move(unit)),
        bytes_(std::move(bytes)),
        enabled_(::isatty(STDERR_FILENO) != 0) {}
  ~ProgressLine() { Finish(); }

  bool enabled() const { return enabled_; }

  void Update(uint64_t done, uint64_t total, uint64_t bytes) {
    if (!enabled_) return;
    const auto now = Clock::now();
    if (shown_ && done < total && Seconds(last_, now) < 0.5) return;  // the last one always shows
    last_ = now;
    shown_ = true;
    const double s = Seconds(start_, now);
    const double eta = done > 0 && total >= done ? s * (static_cast<double>(total) / done - 1) : -1;
    std::fprintf(stderr, "\r\033[K%s: %llu / %llu %s (%.0f%%), %.0f MB %s, %.1f MB/s, ETA %s", verb_.c_str(),
                 (unsigned long long)done, (unsigned long long)total, unit_.c_str(),
                 total ? 100.0 * done / total : 100.0, bytes / 1e6, bytes_.c_str(), s > 0 ? bytes / 1e6 / s : 0.0,
                 FormatDuration(eta).c_str());
    std::fflush(stderr);
  }

  // Ends the line (if one was shown) so that what follows starts clean.
  void Finish() {
    if (!shown_) return;
    std::fprintf(stderr, "\n");
    shown_ = false;
  }

 private:
  using Clock = std::chrono::steady_clock;
  static double Seconds(Clock::time_point a, Clock::time_point b) {
    return std::chrono::duration<double>(b - a).count();
  }
  const std::string verb_, unit_, bytes_;
  const bool enabled_;
  const Clock::time_point start_ = Clock::now();
  Clock::time_point last_{};
  bool shown_ = false;
};

}  // namespace msa::cli
