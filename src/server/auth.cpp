#include "server/auth.h"

#include <cctype>
#include <fstream>

#include "core/error.h"

namespace batchmax::server {

namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

// Time independent of where the first difference is (the length still shows).
bool equal_constant_time(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i)
    diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

}  // namespace

ApiKeys::ApiKeys(std::vector<std::string> keys) {
  for (auto& k : keys) {
    std::string_view t = trim(k);
    if (t.empty()) throw Error("an API key must not be empty");
    keys_.emplace_back(t);
  }
}

std::vector<std::string> ApiKeys::read_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error("cannot read the API key file " + path);
  std::vector<std::string> keys;
  std::string line;
  while (std::getline(in, line)) {
    std::string_view t = trim(line);
    if (t.empty() || t.front() == '#') continue;
    keys.emplace_back(t);
  }
  if (keys.empty()) throw Error("the API key file " + path + " holds no key");
  return keys;
}

bool ApiKeys::authorized(std::string_view header) const {
  if (keys_.empty()) return true;
  header = trim(header);
  constexpr std::string_view scheme = "bearer ";
  if (header.size() <= scheme.size()) return false;
  for (size_t i = 0; i < scheme.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(header[i])) != scheme[i]) return false;
  const std::string_view key = trim(header.substr(scheme.size()));
  bool ok = false;
  for (const auto& k : keys_) ok |= equal_constant_time(key, k);  // no early exit
  return ok;
}

bool ApiKeys::is_open_path(std::string_view path) { return path == "/health"; }

}  // namespace batchmax::server
