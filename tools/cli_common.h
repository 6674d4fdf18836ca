// Shared by the msa subcommands: exit codes and error reporting.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

#include "msa/status.h"

namespace msa::cli {

// Exit codes distinguish what went wrong, for scripts. The one place they
// are defined: Fail() maps a Status to them, main() maps CLI11's parse
// errors to kExitUsage, and kExitCodesHelp (shown by `msa --help`) and the
// README list them.
enum ExitCode : int {
  kExitOk = 0,
  kExitFailure = 1,     // internal or unclassified
  kExitUsage = 2,       // bad command line: unknown option, missing argument, bad combination
  kExitBadInput = 3,    // invalid argument, bad file contents, name already taken, unsupported format
  kExitNotFound = 4,    // store, file, document or block missing
  kExitIoError = 5,     // the OS failed a read/write/sync, or corruption on disk (verify found a problem)
  kExitInterrupted = 130,  // SIGINT/SIGTERM during a bulk ingest: what was appended is committed
};

inline constexpr const char kExitCodesHelp[] =
    "Exit codes: 0 ok, 1 other failure, 2 bad usage, 3 bad input (invalid argument or file\n"
    "contents), 4 not found (store, file, document, block), 5 I/O error or corruption,\n"
    "130 interrupted (what was ingested is committed). Errors are one line on stderr.\n"
    "`msa COMMAND --help` shows each command's options and an example.\n"
    "Examples: msa create /data/mem --layers 2 --kv-heads 2 --head-dim 64\n"
    "          msa ingest /data/mem --dir /data/shards\n"
    "          msa query /data/mem --layer 0 --queries q.npy --out o.npy --explain";

// "1 document", "2 documents": a count and its noun (plural by a trailing s),
// for the text outputs.
inline std::string Count(uint64_t n, const std::string& noun) {
  return std::to_string(n) + " " + noun + (n == 1 ? "" : "s");
}

// Prints "msa: <message>" on one line to stderr and maps the code.
inline int Fail(const Status& s) {
  std::fprintf(stderr, "msa: %s\n", s.ToString().c_str());
  switch (s.code()) {
    case Status::Code::kInvalidArgument:
    case Status::Code::kAlreadyExists:
    case Status::Code::kNotSupported: return kExitBadInput;
    case Status::Code::kNotFound: return kExitNotFound;
    case Status::Code::kIOError:
    case Status::Code::kCorruption: return kExitIoError;
    default: return kExitFailure;
  }
}

}  // namespace msa::cli
