// SHA-256 digests as lowercase hex, for identifying files we were given (tokenizers, base
// models) and checking what we wrote.
#pragma once
#include <cstdint>
#include <string>

namespace dms {

std::string sha256_hex(const void* data, uint64_t bytes);
// The whole file (memory-mapped); InputError naming the path when it cannot be read.
std::string sha256_file(const std::string& path);

}  // namespace dms
