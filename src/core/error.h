#pragma once
// One exception type for every user-facing failure: the message names the problem
// (the file, the field, the value) so the CLI can print it as is.
#include <stdexcept>
#include <string>

namespace batchmax {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

}  // namespace batchmax
