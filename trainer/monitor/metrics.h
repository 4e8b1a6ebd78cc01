// What a person watching a run sees: a progress line with ETA (redrawn on a TTY,
// periodic plain lines otherwise) and metrics.jsonl, one JSON object per record.
#pragma once
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

namespace dms {

class Progress {
 public:
  // total units of work; label shown in front ("retrofit", "prepare", ...).
  Progress(std::string label, int64_t total, double plain_every_s = 10.0);
  // done units so far and a short status text ("kd 0.012 cr 3.1/4.0").
  void update(int64_t done, const std::string& status = "");
  void finish(const std::string& status = "");
  static std::string format_duration(double seconds);

 private:
  std::string label_;
  int64_t total_;
  double plain_every_;
  bool tty_;
  std::chrono::steady_clock::time_point start_, last_plain_;
  int64_t done_ = 0;
  void draw(const std::string& status, bool final);
};

// Appends one JSON object per line and flushes, so a live run can be read at any time
// and a killed run leaves only complete lines.
class MetricsLog {
 public:
  explicit MetricsLog(const std::string& path, bool append = false);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;
  void write(const nlohmann::json& record);

 private:
  std::FILE* f_ = nullptr;
  std::string path_;
};

}  // namespace dms
