// How the CLI names a document: by id ("17") or by name. A name that looks
// like a number is still found by name when no id matches.
#pragma once

#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "store/catalog.h"

namespace msa::cli {

inline std::optional<DocumentRecord> FindDocument(const std::vector<DocumentRecord>& docs,
                                                  const std::string& key) {
  char* end = nullptr;
  const unsigned long long id = std::strtoull(key.c_str(), &end, 10);
  const bool numeric = !key.empty() && end && *end == '\0';
  for (const DocumentRecord& d : docs) {
    if (numeric && d.id == id) return d;
  }
  for (const DocumentRecord& d : docs) {
    if (d.name == key) return d;
  }
  return std::nullopt;
}

}  // namespace msa::cli
