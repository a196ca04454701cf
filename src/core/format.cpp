#include "core/format.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "core/error.h"

namespace batchmax {

std::string format_bytes(int64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = double(bytes);
  int u = 0;
  while (std::fabs(v) >= 1024 && u < 4) { v /= 1024; ++u; }
  char buf[64];
  if (u == 0) std::snprintf(buf, sizeof buf, "%lld B", static_cast<long long>(bytes));
  else std::snprintf(buf, sizeof buf, "%.2f %s", v, units[u]);
  return buf;
}

int64_t parse_bytes(const std::string& text) {
  const char* s = text.c_str();
  char* end = nullptr;
  double v = std::strtod(s, &end);
  if (end == s || !std::isfinite(v) || v < 0)
    throw Error("'" + text + "' is not a size (examples: 24GiB, 512MiB, 1.5GB, 1000000)");
  std::string unit(end);
  double mul = 1;
  if (unit.empty() || unit == "B") mul = 1;
  else if (unit == "KiB" || unit == "K" || unit == "k") mul = 1024.0;
  else if (unit == "MiB" || unit == "M") mul = 1024.0 * 1024;
  else if (unit == "GiB" || unit == "G") mul = 1024.0 * 1024 * 1024;
  else if (unit == "TiB" || unit == "T") mul = 1024.0 * 1024 * 1024 * 1024;
  else if (unit == "KB" || unit == "kB") mul = 1e3;
  else if (unit == "MB") mul = 1e6;
  else if (unit == "GB") mul = 1e9;
  else if (unit == "TB") mul = 1e12;
  else throw Error("'" + text + "': unknown size unit '" + unit + "' (use B, KiB, MiB, GiB, KB, MB, GB)");
  double bytes = v * mul;
  if (bytes > 9.0e18) throw Error("'" + text + "' is too large");
  return int64_t(bytes);
}

}  // namespace batchmax
