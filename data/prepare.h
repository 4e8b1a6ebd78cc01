// Building token files: from text/JSONL corpora (`dms data prepare`) and from the
// teacher's own samples (`dms data sample`).
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "data/chat_data.h"
#include "model/transformer.h"

namespace dms {

struct PrepareOptions {
  std::string tokenizer;            // any form load_tokenizer takes
  std::vector<std::string> inputs;  // .txt / .jsonl files
  std::string out;                  // train file; validation goes to <out stem>.val.h5
  int64_t seq_len = 512;
  double val_fraction = 0.05;     // share of documents held out
  std::string doc_sep = "blank";  // .txt documents: "blank" (blank lines) or "line"
  std::string jsonl_field = "text";
  bool chat = false;  // JSONL records with "messages", rendered by the chat template
  Reasoning reasoning = Reasoning::Keep;
  std::string chat_date;  // date_string for the template ("" = the template's fallback)
  // Framing overrides: "default" (the tokenizer's, see Tokenizer::default_framing; chat:
  // none, the template frames), "none", or a token's text.
  std::string bos = "default", eos = "default";
  int64_t threads = 2;  // encoding threads; the output does not depend on it
  uint64_t seed = 0;    // which documents go to validation
};

struct PrepareResult {
  std::string train_path, val_path;
  int64_t train_rows = 0, val_rows = 0, documents = 0, tokens = 0;
};

// Streams the inputs (never holding the corpus), encodes documents on `threads` threads,
// frames them (ids before + document + ids after) and packs them in input order into rows
// of seq_len; progress(bytes_done, bytes_total) is called as it goes. InputError naming
// the file and byte offset for text that is not UTF-8, and the file:line of a bad record.
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
