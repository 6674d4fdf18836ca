// msa::Status and msa::Result<T>: errors as values.
//
// Modelled on leveldb/rocksdb Status: a cheap OK, factories per error class,
// a message that names the file, tensor or argument at fault. Every function
// that can fail returns one; callers check it (the type is [[nodiscard]]).
#pragma once

#include <cstring>
#include <optional>
#include <string>
#include <utility>

namespace msa {

class [[nodiscard]] Status {
 public:
  // Codes are part of the C API (msa.h maps them 1:1), so never renumber.
  enum class Code : int {
    kOk = 0,
    kInvalidArgument = 1,  // the caller passed something wrong
    kNotFound = 2,         // store, document, file or key absent
    kCorruption = 3,       // checksum mismatch, torn or malformed data
    kIOError = 4,          // the operating system refused a read/write/sync
    kNotSupported = 5,     // feature not built in or not available here
    kAlreadyExists = 6,    // create over an existing store, duplicate doc name
    kInternal = 7,         // a bug in msa: please report
  };

  Status() = default;
  static Status OK() { return Status(); }
  static Status InvalidArgument(std::string m) { return Status(Code::kInvalidArgument, std::move(m)); }
  static Status NotFound(std::string m) { return Status(Code::kNotFound, std::move(m)); }
  static Status Corruption(std::string m) { return Status(Code::kCorruption, std::move(m)); }
  static Status IOError(std::string m) { return Status(Code::kIOError, std::move(m)); }
  static Status NotSupported(std::string m) { return Status(Code::kNotSupported, std::move(m)); }
  static Status AlreadyExists(std::string m) { return Status(Code::kAlreadyExists, std::move(m)); }
  static Status Internal(std::string m) { return Status(Code::kInternal, std::move(m)); }
  // errno-based I/O failure: "<what>: <strerror(err)>".
  static Status FromErrno(const std::string& what, int err) {
    return Status(Code::kIOError, what + ": " + std::strerror(err));
  }

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  // "IO error: open /x/seg: No such file or directory"
  std::string ToString() const {
    if (ok()) return "OK";
    return std::string(CodeName(code_)) + ": " + message_;
  }
  static const char* CodeName(Code code) {
    switch (code) {
      case Code::kOk: return "OK";
      case Code::kInvalidArgument: return "invalid argument";
      case Code::kNotFound: return "not found";
      case Code::kCorruption: return "corruption";
      case Code::kIOError: return "I/O error";
      case Code::kNotSupported: return "not supported";
      case Code::kAlreadyExists: return "already exists";
      case Code::kInternal: return "internal error";
    }
    return "unknown";
  }
  // Prefix the message with context, keeping the code ("reading block 7: ...").
  Status WithContext(const std::string& context) const {
    if (ok()) return *this;
    return Status(code_, context + ": " + message_);
  }

 private:
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}
  Code code_ = Code::kOk;
  std::string message_;
};

// A value or the Status explaining its absence.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : status_(std::move(status)) {}  // NOLINT
  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  T& operator*() { return *value_; }

 private:
  Status status_;
  std::optional<T> value_;
};

}  // namespace msa

// Return early from the enclosing function when `expr` is not OK.
#define MSA_RETURN_IF_ERROR(expr)         \
  do {                                    \
    ::msa::Status _msa_st = (expr);       \
    if (!_msa_st.ok()) return _msa_st;    \
  } while (0)

#define MSA_CONCAT_INNER(a, b) a##b
#define MSA_CONCAT(a, b) MSA_CONCAT_INNER(a, b)
// `MSA_ASSIGN_OR_RETURN(auto x, MakeX());`
#define MSA_ASSIGN_OR_RETURN(lhs, expr) \
  MSA_ASSIGN_OR_RETURN_IMPL(MSA_CONCAT(_msa_res_, __LINE__), lhs, expr)
#define MSA_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return tmp.status();             \
  lhs = std::move(tmp).value()
