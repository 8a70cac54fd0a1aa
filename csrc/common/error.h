// Native errors carry the same stable codes as lib/errors.ts; the binding turns them into JS errors.
#pragma once
#include <stdexcept>
#include <string>

namespace mb {
struct Error : std::runtime_error {
  std::string code;
  Error(std::string c, const std::string& msg) : std::runtime_error(msg), code(std::move(c)) {}
};
#define MB_CHECK(cond, code, msg) \
  do { if (!(cond)) throw ::mb::Error(code, msg); } while (0)
}  // namespace mb
