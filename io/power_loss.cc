#include "io/power_loss.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <random>

namespace msa::io {
namespace {

std::string Normal(std::string_view path) {
  return std::filesystem::path(path).lexically_normal().string();
}

std::string ParentOf(const std::string& normal_path) {
  return std::filesystem::path(normal_path).parent_path().string();
}

bool IsWriteSide(FileOp op) { return op != FileOp::kRead && op != FileOp::kSubmit; }

}  // namespace

PowerLossSimulator::FileState& PowerLossSimulator::Track(const std::string& path) {
  auto it = files_.find(path);
  if (it != files_.end()) return it->second;
  // First seen with data already there: that data counts as synced.
  FileState state;
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) {
    state.written_end = state.synced_end = static_cast<uint64_t>(st.st_size);
  }
  return files_.emplace(path, state).first->second;
}

Fault PowerLossSimulator::Decide(const FileOperation& op) {
  if (!IsWriteSide(op.op)) return Fault::None();
  std::lock_guard<std::mutex> lock(mu_);
  if (++write_ops_ >= cut_at_) return Fault::Error(EIO);
  const std::string path = Normal(op.path);
  struct stat st;
  const bool exists = ::stat(path.c_str(), &st) == 0;
  if (exists && S_ISDIR(st.st_mode)) {
    // A directory's sync makes the names of the files created in it durable.
    if (op.op == FileOp::kSync) {
      for (auto& [file, state] : files_) {
        if (ParentOf(file) == path) state.durable_name = true;
      }
    }
    return Fault::None();
  }
  switch (op.op) {
    case FileOp::kOpen:
      if (!exists) files_[path] = FileState{0, 0, /*durable_name=*/false};  // being created
      break;
    case FileOp::kWrite: {
      FileState& f = Track(path);
      f.written_end = std::max<uint64_t>(f.written_end, op.offset + op.length);
      break;
    }
    case FileOp::kSync: {
      FileState& f = Track(path);
      f.synced_end = std::max(f.synced_end, f.written_end);
      break;
    }
    case FileOp::kTruncate: {
      FileState& f = Track(path);
      f.written_end = std::min<uint64_t>(f.written_end, op.offset);
      f.synced_end = std::min<uint64_t>(f.synced_end, op.offset);
      break;
    }
    case FileOp::kRename: {
      // Taken as durable at once (see the header).
      const std::string to = Normal(op.target);
      auto from = files_.find(path);
      if (from == files_.end()) {
        files_.erase(to);
      } else {
        FileState moved = from->second;
        files_.erase(from);
        files_[to] = moved;
      }
      // Journaling file systems commit metadata in order: a rename that
      // survives brings the names created before it in its directory along.
      const std::string dir = ParentOf(to);
      for (auto& [file, state] : files_) {
        if (ParentOf(file) == dir) state.durable_name = true;
      }
      break;
    }
    default: break;  // kFallocate keeps the size (FALLOC_FL_KEEP_SIZE)
  }
  return Fault::None();
}

void PowerLossSimulator::CutPower() { CutPowerAfter(1); }

void PowerLossSimulator::CutPowerAfter(uint64_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  cut_at_ = write_ops_ + std::max<uint64_t>(n, 1);
}

bool PowerLossSimulator::power_cut() const {
  std::lock_guard<std::mutex> lock(mu_);
  return write_ops_ >= cut_at_;
}

uint64_t PowerLossSimulator::write_operations() const {
  std::lock_guard<std::mutex> lock(mu_);
  return write_ops_;
}

Status PowerLossSimulator::LoseUnsyncedData(uint64_t seed, bool keep_some, Loss* loss) {
  std::lock_guard<std::mutex> lock(mu_);
  std::mt19937_64 rng(seed);
  Loss out;
  for (const auto& [path, f] : files_) {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) continue;  // removed since (unlinks are not tracked)
    if (!f.durable_name) {
      if (::unlink(path.c_str()) != 0) {
        return Status::IOError("power loss: unlink " + path + ": " + std::strerror(errno));
      }
      ++out.files_deleted;
      continue;
    }
    if (f.written_end <= f.synced_end) continue;
    const uint64_t unsynced = f.written_end - f.synced_end;
    const uint64_t kept = keep_some ? rng() % (unsynced + 1) : 0;
    const uint64_t length = f.synced_end + kept;
    if (static_cast<uint64_t>(st.st_size) <= length) continue;
    if (::truncate(path.c_str(), static_cast<off_t>(length)) != 0) {
      return Status::IOError("power loss: truncate " + path + ": " + std::strerror(errno));
    }
    ++out.files_cut;
    out.bytes_lost += static_cast<uint64_t>(st.st_size) - length;
    out.bytes_kept += kept;
  }
  files_.clear();
  cut_at_ = UINT64_MAX;
  if (loss != nullptr) *loss = out;
  return Status::OK();
}

}  // namespace msa::io
