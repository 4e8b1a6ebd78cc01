// Errors shared by every library (common/: the base every folder may use). InputError means "the user gave us a bad
// file or option": the CLI prints its one-line message and exits with 2.
#pragma once
#include <stdexcept>
#include <string>

namespace dms {

struct InputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Throws InputError("<where>: <what>") unless cond holds.
inline void require(bool cond, const std::string& where, const std::string& what) {
  if (!cond) throw InputError(where + ": " + what);
}

}  // namespace dms
