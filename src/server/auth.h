#pragma once
// API keys. Every path needs a key except the ones named open here, compared exactly
// after httplib has percent-decoded the path and split off the query: a variant such as
// "/v1//completions", "/V1/completions" or "/v1/completions/" is not open, so it is
// refused without a key whether or not a route would match it.
#include <string>
#include <string_view>
#include <vector>

namespace batchmax::server {

class ApiKeys {
 public:
  ApiKeys() = default;  // no keys: everything is open
  explicit ApiKeys(std::vector<std::string> keys);
  // One key per line; blank lines and lines starting with '#' are skipped, surrounding
  // whitespace trimmed. Throws batchmax::Error when the file cannot be read or holds no key.
  static std::vector<std::string> read_file(const std::string& path);

  bool enabled() const { return !keys_.empty(); }
  // The value of an Authorization header: "Bearer <key>" (scheme case-insensitive).
  bool authorized(std::string_view authorization_header) const;
  static bool is_open_path(std::string_view path);

 private:
  std::vector<std::string> keys_;
};

}  // namespace batchmax::server
