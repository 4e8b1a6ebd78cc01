#include "trainer/monitor/metrics.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <iostream>
#include <sstream>
#include <stdexcept>

namespace dms {

Progress::Progress(std::string label, int64_t total, double plain_every_s)
    : label_(std::move(label)),
      total_(std::max<int64_t>(1, total)),
      plain_every_(plain_every_s),
      tty_(::isatty(STDERR_FILENO)),
      start_(std::chrono::steady_clock::now()),
      last_plain_(start_) {}

std::string Progress::format_duration(double s) {
  if (!(s >= 0) || s > 1e7) return "--:--";
  const int64_t t = int64_t(s + 0.5);
  char buf[32];
  if (t >= 3600)
    std::snprintf(buf, sizeof(buf), "%lld:%02lld:%02lld", (long long)(t / 3600),
                  (long long)(t / 60 % 60), (long long)(t % 60));
  else
    std::snprintf(buf, sizeof(buf), "%02lld:%02lld", (long long)(t / 60), (long long)(t % 60));
  return buf;
}

void Progress::draw(const std::string& status, bool final) {
  const double el =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double frac = double(done_) / double(total_);
  const double eta = done_ > 0 ? el / frac - el : -1;
  std::ostringstream o;
  if (tty_) {
    const int width = 24, fill = int(frac * width + 0.5);
    o << "\r" << label_ << " [" << std::string(size_t(fill), '#')
      << std::string(size_t(width - fill), '.') << "] ";
  } else {
    o << label_ << " ";
  }
  o << done_ << "/" << total_ << " " << format_duration(el) << " elapsed, ETA "
    << (final ? "00:00" : format_duration(eta));
  if (!status.empty()) o << "  " << status;
  if (tty_) o << "\033[K";
  if (!tty_ || final) o << "\n";
  std::cerr << o.str() << std::flush;
}

void Progress::update(int64_t done, const std::string& status) {
  done_ = done;
  const auto now = std::chrono::steady_clock::now();
  if (tty_) {
    draw(status, false);
  } else if (std::chrono::duration<double>(now - last_plain_).count() >= plain_every_) {
    last_plain_ = now;
    draw(status, false);
  }
}

void Progress::finish(const std::string& status) {
  done_ = total_;
  draw(status, true);
}

MetricsLog::MetricsLog(const std::string& path, bool append) : path_(path) {
  f_ = std::fopen(path.c_str(), append ? "a" : "w");
  if (!f_) throw std::runtime_error(path + ": cannot open: " + std::strerror(errno));
}

MetricsLog::~MetricsLog() {
  if (f_) std::fclose(f_);
}

void MetricsLog::write(const nlohmann::json& record) {
  const std::string line = record.dump() + "\n";
  if (std::fwrite(line.data(), 1, line.size(), f_) != line.size() || std::fflush(f_) != 0)
    throw std::runtime_error(path_ + ": write failed: " + std::strerror(errno));
}

}  // namespace dms
