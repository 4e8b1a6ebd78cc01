// dms report: one self-contained HTML page (inline SVG, no network requests) about a run,
// live or finished: loss curves, target vs decision vs effective CR, a layer x head heat
// map of eviction, the per-head cache sizes, throughput, the config and the eval table.
// --format png writes the same charts as PNG files (through rsvg-convert).
#pragma once
#include <string>

namespace dms {

struct ReportOptions {
  std::string run, out;
  std::string format = "html";  // html | png (out is then a directory)
};

// Returns the number of charts written.
int write_report(const ReportOptions& o);

}  // namespace dms
