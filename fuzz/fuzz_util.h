// Helpers shared by the libFuzzer harnesses of fuzz/ (one harness per .cpp).
//
// Contract of every harness: dms::InputError is our code rejecting a bad file, the
// expected outcome for most inputs; any other exception escapes LLVMFuzzerTestOneInput
// (std::terminate -> abort -> a libFuzzer crash with the exception's what() on stderr),
// and so does a failed FUZZ_CHECK. Sanitizer reports, timeouts and OOMs are findings too.
#pragma once
#include <fcntl.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"

namespace fuzz {

// A condition that must hold for every accepted input: prints it and aborts.
#define FUZZ_CHECK(cond, what)                                                                 \
  do {                                                                                         \
    if (!(cond)) {                                                                             \
      std::fprintf(stderr, "FUZZ_CHECK failed at %s:%d: %s (%s)\n", __FILE__, __LINE__, #cond, \
                   std::string(what).c_str());                                                 \
      std::abort();                                                                            \
    }                                                                                          \
  } while (0)

// This process's scratch directory (created once, under $TMPDIR or /tmp; removed at exit).
inline const std::string& scratch_dir() {
  static const std::string dir = [] {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/dms-fuzz-XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (!::mkdtemp(buf.data())) {
      std::perror("mkdtemp");
      std::abort();
    }
    std::string d(buf.data());
    static std::string cleanup;  // atexit takes no argument
    cleanup = d;
    std::atexit([] {
      std::string cmd = "rm -rf '" + cleanup + "'";
      if (std::system(cmd.c_str()) != 0) {
      }
    });
    return d;
  }();
  return dir;
}

// Writes bytes to <scratch>/<name> (replacing it) and returns the path.
inline std::string write_file(const std::string& name, const void* data, size_t size) {
  const std::string path = scratch_dir() + "/" + name;
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    std::perror(path.c_str());
    std::abort();
  }
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd, p, size);
    if (n <= 0) {
      std::perror(path.c_str());
      std::abort();
    }
    p += n;
    size -= size_t(n);
  }
  ::close(fd);
  return path;
}
inline std::string write_file(const std::string& name, std::string_view bytes) {
  return write_file(name, bytes.data(), bytes.size());
}

inline void remove_file(const std::string& name) {
  ::unlink((scratch_dir() + "/" + name).c_str());
}

// Runs f; an InputError (our code rejecting the input) is the expected way to fail.
// DMS_FUZZ_VERBOSE=1 prints each rejection (to see how far seeds get).
template <class F>
bool accepts(F&& f) {
  try {
    f();
    return true;
  } catch (const dms::InputError& e) {
    static const bool verbose = std::getenv("DMS_FUZZ_VERBOSE") != nullptr;
    if (verbose) std::fprintf(stderr, "rejected: %s\n", e.what());
    return false;
  }
}

// Splits the input at `sep` (several files in one input).
inline std::vector<std::string_view> split(std::string_view s, std::string_view sep) {
  std::vector<std::string_view> out;
  for (;;) {
    const size_t at = s.find(sep);
    if (at == std::string_view::npos) {
      out.push_back(s);
      return out;
    }
    out.push_back(s.substr(0, at));
    s.remove_prefix(at + sep.size());
  }
}

// Seeds a harness writes itself (from tables or fixtures only it knows): with
// DMS_FUZZ_WRITE_SEEDS=DIR set, LLVMFuzzerInitialize writes them into DIR.
inline const char* seed_dir() {
  const char* d = std::getenv("DMS_FUZZ_WRITE_SEEDS");
  return d && *d ? d : nullptr;
}
inline void write_seed(const std::string& name, std::string_view bytes) {
  const std::string path = std::string(seed_dir()) + "/" + name;
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f || std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size()) {
    std::perror(path.c_str());
    std::abort();
  }
  std::fclose(f);
}

}  // namespace fuzz
