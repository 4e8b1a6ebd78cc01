// TensorBoard event files, written by hand (DESIGN.md §3): TFRecord framing
// (u64 length, masked CRC32C of the length, data, masked CRC32C of the data) around
// `Event` protobuf messages holding scalar summaries. Each record is flushed as it is
// written, so a live `tensorboard --logdir` sees progress and a killed run leaves only
// complete records (plus at most one torn tail that readers skip).
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace dms {

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as TFRecord uses it.
uint32_t crc32c(const void* data, size_t n);
// TFRecord's mask: rotate right by 15 and add 0xa282ead8.
uint32_t masked_crc32c(const void* data, size_t n);

// Serialized tensorflow.Event{wall_time, step, summary{value{tag, simple_value}...}}.
std::string scalar_event(double wall_time, int64_t step,
                         const std::vector<std::pair<std::string, float>>& values);
// Serialized tensorflow.Event{wall_time, file_version: "brain.Event:2"}.
std::string file_version_event(double wall_time);
// One TFRecord around `data`.
std::string tfrecord(const std::string& data);

class EventWriter {
 public:
  // Creates <dir>/events.out.tfevents.<unix seconds>.<host> and writes the version record.
  explicit EventWriter(const std::string& dir);
  ~EventWriter();
  EventWriter(const EventWriter&) = delete;
  EventWriter& operator=(const EventWriter&) = delete;
  void scalars(int64_t step, const std::vector<std::pair<std::string, float>>& values);
  const std::string& path() const { return path_; }

 private:
  void append(const std::string& record);
  std::string path_;
  std::FILE* f_ = nullptr;
};

}  // namespace dms
