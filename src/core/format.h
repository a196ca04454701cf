#pragma once
// Human-readable numbers for messages and reports.
#include <cstdint>
#include <string>

namespace batchmax {

// "1.50 GiB", "12.0 MiB", "512 B".
std::string format_bytes(int64_t bytes);
// Parses "24GiB", "512MiB", "1.5GB", "1000000" (bytes); throws batchmax::Error.
int64_t parse_bytes(const std::string& text);

}  // namespace batchmax
