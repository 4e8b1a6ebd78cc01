#include "common/sha256.h"

#include <openssl/evp.h>

#include <cstdio>
#include <stdexcept>

#include "common/mapped_file.h"

namespace dms {

std::string sha256_hex(const void* data, uint64_t bytes) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(data, size_t(bytes), digest, &len, EVP_sha256(), nullptr) != 1)
    throw std::runtime_error("sha256 failed");
  char hex[2 * EVP_MAX_MD_SIZE + 1];
  for (unsigned i = 0; i < len; ++i) std::snprintf(hex + 2 * i, 3, "%02x", digest[i]);
  return std::string(hex, 2 * len);
}

std::string sha256_file(const std::string& path) {
  auto m = map_file(path);
  return sha256_hex(m->data, m->size);
}

}  // namespace dms
