#include "io/fault_injection.h"

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>

namespace msa::io {

namespace detail {
std::atomic<FaultInjector*> g_fault_injector{nullptr};
}  // namespace detail

const char* FileOpName(FileOp op) {
  switch (op) {
    case FileOp::kOpen: return "open";
    case FileOp::kWrite: return "write";
    case FileOp::kSync: return "sync";
    case FileOp::kFallocate: return "fallocate";
    case FileOp::kTruncate: return "truncate";
    case FileOp::kRename: return "rename";
    case FileOp::kRead: return "read";
    case FileOp::kSubmit: return "io_uring submit";
  }
  return "?";
}

namespace {
std::string ErrnoName(int err) {
  switch (err) {
    case EIO: return "EIO";
    case ENOSPC: return "ENOSPC";
    case EDQUOT: return "EDQUOT";
    case EAGAIN: return "EAGAIN";
    case EINTR: return "EINTR";
    case EBUSY: return "EBUSY";
    case ENOMEM: return "ENOMEM";
    case EROFS: return "EROFS";
    case EMFILE: return "EMFILE";
    case EBADF: return "EBADF";
  }
  return "errno " + std::to_string(err);
}
}  // namespace

std::string Fault::ToString() const {
  switch (kind) {
    case Kind::kNone: return "none";
    case Kind::kError: return ErrnoName(error);
    case Kind::kShort: return "short(" + std::to_string(bytes) + ")" + (then_eof ? "+eof" : "");
    case Kind::kEof: return "eof";
    case Kind::kCorrupt: return "corrupt(" + std::to_string(bytes) + ")";
  }
  return "?";
}

bool Fault::hard() const {
  switch (kind) {
    case Kind::kNone: return false;
    case Kind::kError: return error != EINTR && error != EAGAIN;
    case Kind::kShort: return then_eof;
    case Kind::kEof:
    case Kind::kCorrupt: return true;
  }
  return true;
}

FaultInjector* SetFaultInjector(FaultInjector* injector) {
  return detail::g_fault_injector.exchange(injector, std::memory_order_acq_rel);
}

std::string FaultSchedule::Injection::ToString() const {
  return fault.ToString() + " on " + FileOpName(op) + " " + path + " at " + std::to_string(offset);
}

namespace {
// splitmix64's finaliser: a well-mixed 64-bit hash step.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// What identifies an operation across runs: its kind, the file's name
// without its directory (temporary directories differ), offset and length.
uint64_t OperationKey(const FileOperation& op) {
  const size_t slash = op.path.find_last_of('/');
  const std::string_view name = slash == std::string_view::npos ? op.path : op.path.substr(slash + 1);
  uint64_t h = Mix(static_cast<uint64_t>(op.op) + 1);
  for (char c : name) h = Mix(h ^ static_cast<uint8_t>(c));
  return Mix(Mix(h ^ op.offset) ^ op.length);
}
}  // namespace

FaultSchedule::FaultSchedule(std::vector<Rule> rules, uint64_t seed) : seed_(seed) {
  Reset(std::move(rules));
}

void FaultSchedule::set_enabled(bool enabled) { enabled_.store(enabled); }

void FaultSchedule::Reset(std::vector<Rule> rules) {
  std::lock_guard<std::mutex> lock(mu_);
  rules_ = std::move(rules);
  matched_.assign(rules_.size(), 0);
  eof_at_.clear();
}

Fault FaultSchedule::Decide(const FileOperation& op) {
  if (!enabled_.load()) return Fault::None();
  std::lock_guard<std::mutex> lock(mu_);
  if (op.op == FileOp::kRead && !eof_at_.empty()) {
    for (auto it = eof_at_.begin(); it != eof_at_.end(); ++it) {
      if (it->first == op.fd && it->second == op.offset) {
        eof_at_.erase(it);
        log_.push_back(Injection{SIZE_MAX, op.op, std::string(op.path), op.offset, Fault::Eof()});
        return Fault::Eof();
      }
    }
  }
  uint64_t draw_key = 0;  // for random rules: this operation, this time
  bool have_key = false;
  for (size_t i = 0; i < rules_.size(); ++i) {
    const Rule& rule = rules_[i];
    if ((rule.ops & OpMask(op.op)) == 0 || rule.catalog != op.catalog) continue;
    if (!rule.path_contains.empty() && op.path.find(rule.path_contains) == std::string_view::npos) continue;
    if (rule.filter && !rule.filter(op)) continue;
    const uint64_t k = matched_[i]++;
    bool fire;
    if (rule.probability > 0) {
      if (!have_key) {
        const uint64_t key = OperationKey(op);
        draw_key = Mix(seed_ ^ Mix(key ^ seen_[key]++));
        have_key = true;
      }
      const uint64_t draw = Mix(draw_key ^ (i + 1));
      fire = static_cast<double>(draw >> 11) * 0x1.0p-53 < rule.probability;
    } else {
      fire = k >= rule.first && k - rule.first < rule.count;
    }
    if (!fire || rule.fault.none()) continue;
    // A short transfer of a call no longer than the short length would be
    // the whole call: nothing to inject, and nothing to log.
    if (rule.fault.kind == Fault::Kind::kShort && (op.op == FileOp::kRead || op.op == FileOp::kWrite) &&
        std::max<size_t>(rule.fault.bytes, 1) >= op.length) {
      continue;
    }
    log_.push_back(Injection{i, op.op, std::string(op.path), op.offset, rule.fault});
    const Fault& f = rule.fault;
    if (op.op == FileOp::kRead && f.kind == Fault::Kind::kShort && f.then_eof) {
      const size_t got = std::max<size_t>(f.bytes, 1);
      if (got < op.length) eof_at_.emplace_back(op.fd, op.offset + got);
    }
    return f;
  }
  return Fault::None();
}

uint64_t FaultSchedule::matched(size_t rule) const {
  std::lock_guard<std::mutex> lock(mu_);
  return rule < matched_.size() ? matched_[rule] : 0;
}

std::vector<FaultSchedule::Injection> FaultSchedule::injections() const {
  std::lock_guard<std::mutex> lock(mu_);
  return log_;
}

uint64_t FaultSchedule::injected() const {
  std::lock_guard<std::mutex> lock(mu_);
  return log_.size();
}

}  // namespace msa::io
