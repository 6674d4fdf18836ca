// Shared by the crash tests: run this test binary again as a child that
// works on a store and acknowledges progress on a pipe, and kill it with
// SIGKILL at a chosen moment. (The child is re-executed, not just forked:
// fork alone would copy a multi-threaded process.)
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <thread>

namespace msa::testing {

// Sanitizer builds start and run several times slower, so
// tools/test_sanitizers.sh sets MSA_CRASH_TEST_SLOWDOWN to stretch the kill
// window (otherwise no child would get anything done before its kill).
inline int CrashTestSlowdown() {
  const char* s = std::getenv("MSA_CRASH_TEST_SLOWDOWN");
  const int factor = s != nullptr ? std::atoi(s) : 1;
  return factor >= 1 ? factor : 1;
}

// Kills per crash test: 200 in CI; MSA_CRASH_TEST_ITERATIONS for a longer
// soak (tools/crash_soak.sh).
inline int CrashTestIterations() {
  const char* s = std::getenv("MSA_CRASH_TEST_ITERATIONS");
  const int n = s != nullptr ? std::atoi(s) : 0;
  return n >= 1 ? n : 200;
}

// The child's first act: tells the parent it is running (acknowledges 0),
// so that the kill delay starts there.
inline void CrashChildStarted(int ack_fd) {
  const uint64_t zero = 0;
  (void)::write(ack_fd, &zero, sizeof(zero));
}

// The child's side: the store it works on and the descriptor it acknowledges
// on (uint64_t values, growing); false when not running as a crash child.
inline bool CrashChildArguments(std::string* store, int* ack_fd) {
  const char* path = std::getenv("MSA_CRASH_CHILD_STORE");
  const char* fd = std::getenv("MSA_CRASH_CHILD_FD");
  if (path == nullptr || fd == nullptr) return false;
  *store = path;
  *ack_fd = std::atoi(fd);
  return true;
}

struct CrashChildRun {
  bool killed = false;    // false: it ended on its own (a failure)
  int status = 0;         // waitpid's
  uint64_t max_ack = 0;   // the largest value it acknowledged, 0 if none
};

// Runs the gtest `child_test` (e.g. "CrashChild.Ingest") in a child on
// `store`, kills it `delay_us` microseconds later (times the slowdown).
inline CrashChildRun RunCrashChild(const std::string& child_test, const std::string& store,
                                   int delay_us) {
  CrashChildRun run;
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return run;
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(fds[1], 100);  // dup2 clears O_CLOEXEC on the copy
    ::setenv("MSA_CRASH_CHILD_STORE", store.c_str(), 1);
    ::setenv("MSA_CRASH_CHILD_FD", "100", 1);
    const int devnull = ::open("/dev/null", O_WRONLY);
    ::dup2(devnull, 1);
    const std::string filter = "--gtest_filter=" + child_test;
    ::execl("/proc/self/exe", "msa_tests", filter.c_str(), nullptr);
    ::_exit(127);
  }
  ::close(fds[1]);
  if (pid < 0) {
    ::close(fds[0]);
    return run;
  }
  // The delay counts from the child's "started" message (CrashChildStarted):
  // exec, loading the libraries and GoogleTest's start take tens of
  // milliseconds more on a loaded machine, and a kill inside them tests
  // nothing. Opening or creating the store is still inside the window.
  pollfd started{fds[0], POLLIN, 0};
  if (::poll(&started, 1, 60000) == 1) {
    uint64_t value;
    if (::read(fds[0], &value, sizeof(value)) == sizeof(value)) run.max_ack = value;
  }
  std::this_thread::sleep_for(std::chrono::microseconds(delay_us * CrashTestSlowdown()));
  ::kill(pid, SIGKILL);
  ::waitpid(pid, &run.status, 0);
  run.killed = WIFSIGNALED(run.status);
  uint64_t value;
  while (::read(fds[0], &value, sizeof(value)) == sizeof(value)) run.max_ack = std::max(run.max_ack, value);
  ::close(fds[0]);
  return run;
}

}  // namespace msa::testing
