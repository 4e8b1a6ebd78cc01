#include "trainer/monitor/tensorboard.h"

#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <stdexcept>

namespace dms {

namespace {

std::array<uint32_t, 256> make_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    t[i] = c;
  }
  return t;
}

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(char(uint8_t(v) | 0x80));
    v >>= 7;
  }
  out.push_back(char(v));
}

void put_fixed(std::string& out, const void* p, size_t n) {  // little-endian host
  out.append(static_cast<const char*>(p), n);
}

// Field `field` with wire type 2 (length-delimited).
void put_bytes(std::string& out, int field, const std::string& bytes) {
  put_varint(out, uint64_t(field) << 3 | 2);
  put_varint(out, bytes.size());
  out += bytes;
}

std::string event_header(double wall_time, int64_t step) {
  std::string e;
  put_varint(e, 1 << 3 | 1);  // wall_time: double
  put_fixed(e, &wall_time, 8);
  if (step != 0) {
    put_varint(e, 2 << 3 | 0);  // step: int64 varint
    put_varint(e, uint64_t(step));
  }
  return e;
}

}  // namespace

uint32_t crc32c(const void* data, size_t n) {
  static const std::array<uint32_t, 256> table = make_table();
  const uint8_t* p = static_cast<const uint8_t*>(data);
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

uint32_t masked_crc32c(const void* data, size_t n) {
  const uint32_t c = crc32c(data, n);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

std::string scalar_event(double wall_time, int64_t step,
                         const std::vector<std::pair<std::string, float>>& values) {
  std::string summary;
  for (const auto& [tag, v] : values) {
    std::string value;
    put_bytes(value, 1, tag);       // Summary.Value.tag
    put_varint(value, 2 << 3 | 5);  // simple_value: float (fixed32)
    put_fixed(value, &v, 4);
    put_bytes(summary, 1, value);  // Summary.value (repeated)
  }
  std::string e = event_header(wall_time, step);
  put_bytes(e, 5, summary);  // Event.summary
  return e;
}

std::string file_version_event(double wall_time) {
  std::string e = event_header(wall_time, 0);
  put_bytes(e, 3, "brain.Event:2");  // Event.file_version
  return e;
}

std::string tfrecord(const std::string& data) {
  std::string r;
  const uint64_t len = data.size();
  put_fixed(r, &len, 8);
  const uint32_t lcrc = masked_crc32c(&len, 8);
  put_fixed(r, &lcrc, 4);
  r += data;
  const uint32_t dcrc = masked_crc32c(data.data(), data.size());
  put_fixed(r, &dcrc, 4);
  return r;
}

static double now_s() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

EventWriter::EventWriter(const std::string& dir) {
  char host[256] = "localhost";
  gethostname(host, sizeof(host) - 1);
  path_ = dir + "/events.out.tfevents." + std::to_string(int64_t(now_s())) + "." + host;
  f_ = std::fopen(path_.c_str(), "ab");
  if (!f_) throw std::runtime_error(path_ + ": cannot create: " + std::strerror(errno));
  append(tfrecord(file_version_event(now_s())));
}

EventWriter::~EventWriter() {
  if (f_) std::fclose(f_);
}

void EventWriter::append(const std::string& record) {
  if (std::fwrite(record.data(), 1, record.size(), f_) != record.size() || std::fflush(f_) != 0)
    throw std::runtime_error(path_ + ": write failed: " + std::strerror(errno));
}

void EventWriter::scalars(int64_t step, const std::vector<std::pair<std::string, float>>& values) {
  append(tfrecord(scalar_event(now_s(), step, values)));
}

}  // namespace dms
