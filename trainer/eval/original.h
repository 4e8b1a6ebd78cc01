// Which model is "the original" of an evaluation: the unchanged model that DMS is compared
// with (perplexity, KL) and that the training-free baselines (window, H2O, TOVA) run on.
// For an export of `dms retrofit` that is the base the run started from, recorded in its
// dms_report.json (path, size, sha256) — whatever the train mode: after a full-weight
// retrofit the export with eviction off is the fine-tuned model, not the original.
#pragma once
#include <string>

namespace dms {

struct OriginalChoice {
  std::string path;         // the model to load; "" = the evaluated model with eviction off
  std::string description;  // for the table and JSON: what it is and why
};

// `original_opt`: the user's --original ("" when not given), named `option` in messages.
// - given: used as asked; a note on stderr when it is not the recorded base (by sha256);
// - else the recorded base, found where it was recorded and checked by sha256;
// - a base missing or changed: an adapters-only export falls back to itself with eviction
//   off (its base weights are the base's, unchanged), with a note; a full-weight export is
//   an InputError naming the base and `option`;
// - no record (a model that is not our export): the model itself with eviction off.
OriginalChoice choose_original(const std::string& model_path, const std::string& original_opt,
                               const std::string& option);

}  // namespace dms
