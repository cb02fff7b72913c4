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

// The first line of any exception's message, without torch's backtrace ("unknown error" when
// empty): what a program prints for an error it did not expect.
std::string first_line(const std::exception& e);

}  // namespace lunakit
