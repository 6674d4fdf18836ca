#include "store/log_level.h"

#include <cctype>
#include <cstdlib>
#include <string>

#include <spdlog/spdlog.h>

namespace msa {

std::optional<spdlog::level::level_enum> ParseLogLevel(std::string_view name) {
  std::string lower(name);
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  using spdlog::level::level_enum;
  if (lower == "trace") return level_enum::trace;
  if (lower == "debug") return level_enum::debug;
  if (lower == "info") return level_enum::info;
  if (lower == "warn" || lower == "warning") return level_enum::warn;
  if (lower == "error" || lower == "err") return level_enum::err;
  if (lower == "critical") return level_enum::critical;
  if (lower == "off") return level_enum::off;
  return std::nullopt;
}

void SetLogLevelFromEnvironment() {
  spdlog::set_level(spdlog::level::warn);
  const char* env = std::getenv("MSA_LOG_LEVEL");
  if (env == nullptr || *env == '\0') return;
  if (const auto level = ParseLogLevel(env)) {
    spdlog::set_level(*level);
  } else {
    spdlog::warn("MSA_LOG_LEVEL={} is not a level (trace, debug, info, warn, error, critical, off); logging "
                 "from warn on",
                 env);
  }
}

}  // namespace msa
