// dms export: a retrofit's checkpoint -> an HF directory with the official DMS config
// fields and tensor names, tokenizer files and dms_report.json. Everything needed comes
// from the checkpoint itself (the DMS config, the trained tensors, the base model's
// identity), not from the run's config.json.
#pragma once
#include <string>

#include "checkpoints/train_state.h"
#include "model/transformer.h"

namespace dms {

// The dtype of an export's weights: the source model's own (bf16 in, bf16 out), or forced.
enum class ExportDtype { source, f32, bf16, f16 };

struct ExportRequest {
  std::string run_dir;
  int64_t step = 0;  // <= 0: the newest checkpoint that reads back intact
  std::string out;
  bool force = false;  // replace `out` when it is one of our exports
  std::string base;    // the base model's new location, when it moved since training
  ExportDtype dtype = ExportDtype::source;
};

// A checkpoint as a model: the base model (found by the identity the checkpoint recorded;
// `base` overrides its path, named `base_option` in errors) with the trained tensors on
// top. InputError (exit 2) for a damaged checkpoint and a base that moved or changed.
struct CheckpointModel {
  std::string checkpoint, base;  // paths
  TrainState state;
  Model model;
};
CheckpointModel load_checkpoint_model(const std::string& checkpoint, const std::string& base,
                                      const std::string& base_option);

// Returns the checkpoint used. InputError (exit 2) for a bad target, a missing checkpoint,
// and a base model that moved (without --base) or changed.
std::string export_run(const ExportRequest& req);

}  // namespace dms
