#pragma once
// lunakit::Error: the one exception type of the C++ API. Its message names the
// file (or input) and what is wrong with it, in one line.
#include <stdexcept>
#include <string>

namespace lunakit {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace lunakit
