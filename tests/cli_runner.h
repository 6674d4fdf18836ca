// Runs the msa CLI (MSA_CLI_PATH, set by tests/CMakeLists.txt) as a user
// would, for the CLI tests: exit code, stdout and stderr.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>

namespace msa::testing {

struct CliResult {
  int code = -1;
  std::string out, err;
};

// `msa ARGS`, stdin from `stdin_file` (nothing by default).
inline CliResult Cli(const std::string& args, const std::string& stdin_file = "/dev/null") {
  static int serial = 0;
  const std::string base = ::testing::TempDir() + "msa_cli_" + std::to_string(::getpid()) + "_" +
                           std::to_string(serial++);
  const std::string cmd =
      std::string(MSA_CLI_PATH) + " " + args + " >" + base + ".out 2>" + base + ".err <" + stdin_file;
  const int rc = std::system(cmd.c_str());
  CliResult r;
  r.code = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  for (auto [path, dst] : {std::pair{base + ".out", &r.out}, std::pair{base + ".err", &r.err}}) {
    std::ifstream f(path);
    std::getline(f, *dst, '\0');
    std::filesystem::remove(path);
  }
  return r;
}

}  // namespace msa::testing
