// Building token files: from text/JSONL corpora (`dms data prepare`) and from the
// teacher's own samples (`dms data sample`).
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "model/transformer.h"

namespace dms {

struct PrepareOptions {
  std::string tokenizer;            // SentencePiece .model
  std::vector<std::string> inputs;  // .txt / .jsonl files
  std::string out;                  // train file; validation goes to <out stem>.val.h5
  int64_t seq_len = 512;
  double val_fraction = 0.05;     // share of documents held out
  std::string doc_sep = "blank";  // .txt documents: "blank" (blank lines) or "line"
  std::string jsonl_field = "text";
  bool add_eos = true;  // append EOS to each document when the tokenizer has one
  uint64_t seed = 0;    // which documents go to validation
};

struct PrepareResult {
  std::string train_path, val_path;
  int64_t train_rows = 0, val_rows = 0, documents = 0, tokens = 0;
};

// Streams the inputs (never holding the corpus), packs documents (BOS + ids [+ EOS])
// into rows of seq_len; progress(bytes_done, bytes_total) is called as it goes.
PrepareResult prepare_data(const PrepareOptions& o,
                           const std::function<void(uint64_t, uint64_t)>& progress = {});

// The validation file name for a train file: data.h5 -> data.val.h5
std::string validation_path(const std::string& train_path);

struct SampleOptions {
  int64_t count = 256, length = 256;
  double temperature = 1.0, top_p = 1.0;
  uint64_t seed = 0;
  int64_t batch = 16;
  std::string out, source_model;
};

// Rows sampled from the model itself, each starting at BOS. progress(rows_done, total).
int64_t sample_teacher_data(const Model& m, const SampleOptions& o,
                            const std::function<void(uint64_t, uint64_t)>& progress = {});

}  // namespace dms
