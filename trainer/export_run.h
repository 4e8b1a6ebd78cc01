// dms export: a finished (or running) retrofit's checkpoint -> an HF directory with
// the official DMS config fields and tensor names, tokenizer files and dms_report.json.
#pragma once
#include <string>

namespace dms {

// step <= 0: the newest valid checkpoint. Returns the checkpoint used.
std::string export_run(const std::string& run_dir, int64_t step, const std::string& out,
                       bool overwrite);

}  // namespace dms
