// The MSA_LOG_LEVEL environment variable, read the same way by the CLI and
// the library: trace, debug, info, warn (or warning), error (or err),
// critical, off, in any case. spdlog's own parser turns a name it does not
// know into "off", which would silence the warnings too (MSA_LOG_LEVEL=INFO
// did); here an unknown name keeps the default (warn) and says so once.
#pragma once

#include <optional>
#include <string_view>

#include <spdlog/common.h>

namespace msa {

std::optional<spdlog::level::level_enum> ParseLogLevel(std::string_view name);

// Sets spdlog's level from MSA_LOG_LEVEL, or to warn when it is unset or
// unknown (with a warning naming the bad value).
void SetLogLevelFromEnvironment();

}  // namespace msa
