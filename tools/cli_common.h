// Shared by the msa subcommands: exit codes and error reporting.
#pragma once

#include <cstdio>
#include <string>

#include "msa/status.h"

namespace msa::cli {

// Exit codes distinguish what went wrong, for scripts.
enum ExitCode : int {
  kExitOk = 0,
  kExitFailure = 1,     // internal or unclassified
  kExitUsage = 2,       // bad command line (CLI11 also uses 2... via its own codes)
  kExitBadInput = 3,    // invalid argument, bad file contents
  kExitNotFound = 4,    // store or file missing
  kExitIoError = 5,     // the OS failed a read/write/sync, or corruption on disk
};

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
