#include "data/prepare.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/mapped_file.h"
#include "common/sha256.h"
#include "data/token_file.h"
#include "data/tokenizer.h"
#include "common/error.h"
#include "model/generate.h"

namespace fs = std::filesystem;

namespace dms {

std::string validation_path(const std::string& train_path) {
  fs::path p(train_path);
  return (p.parent_path() / (p.stem().string() + ".val" + p.extension().string())).string();
}

namespace {

// Packs documents into fixed rows for one split.
struct Packer {
  TokenWriter writer;
  int64_t T;
  std::vector<uint32_t> buf;
  Packer(const std::string& path, int64_t seq_len, const TokenFileInfo& info)
      : writer(path, seq_len, info), T(seq_len) {}
  void add(const std::vector<int64_t>& doc) {
    for (int64_t id : doc) {
      buf.push_back(uint32_t(id));
      if (int64_t(buf.size()) == T) {
        writer.add_row(buf);
        buf.clear();
      }
    }
  }
};

// Deterministic per-document split: a hash of (seed, index) against the fraction.
bool goes_to_validation(uint64_t seed, int64_t doc, double fraction) {
  uint64_t x = seed * 0x9e3779b97f4a7c15ull + uint64_t(doc) + 0x632be59bd9b4e019ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  x ^= x >> 31;
  return double(x >> 11) * (1.0 / 9007199254740992.0) < fraction;
}

void check_options(const PrepareOptions& o) {
  require(!o.inputs.empty(), "--input", "no input files");
  require(o.seq_len >= 2, "--seq-len", "must be at least 2");
  require(o.val_fraction >= 0 && o.val_fraction < 1, "--val-fraction", "must be in [0, 1)");
  require(o.doc_sep == "blank" || o.doc_sep == "line", "--doc-sep", "must be 'blank' or 'line'");
}

// Checks that every input exists with a type we read; returns their total size in bytes.
uint64_t input_bytes(const std::vector<std::string>& inputs) {
  uint64_t total = 0;
  for (const auto& f : inputs) {
    require_regular_file(f);  // before anything opens it: a FIFO would block
    const std::string ext = fs::path(f).extension().string();
    require(ext == ".txt" || ext == ".jsonl" || ext == ".json", f,
            "unsupported input type (use .txt or .jsonl)");
    total += fs::file_size(f);
  }
  return total;
}

TokenFileInfo token_file_info(const PrepareOptions& o, const Tokenizer& tok) {
  TokenFileInfo info;
  info.vocab_size = tok.vocab_size();
  info.tokenizer_hash = sha256_file(o.tokenizer);
  info.bos_id = tok.bos_id();
  info.eos_id = o.add_eos ? tok.eos_id() : -1;
  for (const auto& f : o.inputs)
    info.source += (info.source.empty() ? "" : ", ") + fs::path(f).filename().string();
  return info;
}

// The text of one JSON-lines record (line line_no of file f).
std::string jsonl_text(const std::string& line, const std::string& f, int64_t line_no,
                       const std::string& field) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(line);
  } catch (const nlohmann::json::exception&) {
    throw InputError(f + ":" + std::to_string(line_no) + ": not a JSON object");
  }
  require(j.is_object() && j.contains(field) && j[field].is_string(),
          f + ":" + std::to_string(line_no), "no string field '" + field + "' (see --field)");
  return j[field].get<std::string>();
}

// Bytes read so far against the total, reported every 256 lines.
struct Progress {
  const std::function<void(uint64_t, uint64_t)>& report;
  uint64_t done = 0, total = 0;
};

// Splits input file f into documents (JSON-lines records, lines, or blank-line separated
// paragraphs, as the options say) and hands each to emit.
void read_documents(const std::string& f, const PrepareOptions& o,
                    const std::function<void(const std::string&)>& emit, Progress& progress) {
  std::ifstream in(f);  // input_bytes checked it is a regular file
  require(bool(in), f, "cannot read");
  const bool jsonl = fs::path(f).extension() != ".txt";
  std::string line, doc;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    progress.done += line.size() + 1;
    if (jsonl) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      emit(jsonl_text(line, f, line_no, o.jsonl_field));
    } else if (o.doc_sep == "line") {
      emit(line);
    } else if (line.find_first_not_of(" \t\r") == std::string::npos) {
      emit(doc);
      doc.clear();
    } else {
      doc += doc.empty() ? line : "\n" + line;
    }
    if (progress.report && (line_no % 256 == 0)) progress.report(progress.done, progress.total);
  }
  if (!doc.empty()) emit(doc);
}

}  // namespace

PrepareResult prepare_data(const PrepareOptions& o,
                           const std::function<void(uint64_t, uint64_t)>& progress) {
  check_options(o);
  Tokenizer tok = load_tokenizer(o.tokenizer);
  Progress bytes{progress};
  bytes.total = input_bytes(o.inputs);
  TokenFileInfo info = token_file_info(o, tok);

  PrepareResult r;
  r.train_path = o.out;
  r.val_path = validation_path(o.out);
  Packer train(r.train_path, o.seq_len, info), val(r.val_path, o.seq_len, info);
  int64_t docs = 0, train_docs = 0;
  auto emit = [&](const std::string& text) {
    if (text.find_first_not_of(" \t\r\n") == std::string::npos) return;
    std::vector<int64_t> ids = tok.encode(text, /*add_bos=*/true, /*add_eos=*/o.add_eos);
    r.tokens += int64_t(ids.size());
    if (goes_to_validation(o.seed, docs, o.val_fraction)) {
      val.add(ids);
    } else {
      train.add(ids);
      ++train_docs;
    }
    ++docs;
  };
  for (const auto& f : o.inputs) read_documents(f, o, emit, bytes);
  if (progress) progress(bytes.total, bytes.total);
  r.documents = docs;
  require(train.writer.rows() > 0, o.out,
          "the inputs hold fewer than one row of " + std::to_string(o.seq_len) +
              " tokens for training");
  info.documents = train_docs;
  train.writer.finish();
  r.train_rows = train.writer.rows();
  r.val_rows = val.writer.rows();
  val.writer.finish();
  return r;
}

int64_t sample_teacher_data(const Model& m, const SampleOptions& o,
                            const std::function<void(uint64_t, uint64_t)>& progress) {
  require(o.count > 0 && o.length >= 2, "--count/--length", "must be positive (length >= 2)");
  require(m.config.max_position <= 0 || o.length <= m.config.max_position, "--length",
          "longer than the model's context of " + std::to_string(m.config.max_position));
  const int64_t bos = m.config.bos_id >= 0 ? m.config.bos_id : 0;
  TokenFileInfo info;
  info.vocab_size = m.config.vocab_size;
  info.bos_id = m.config.bos_id;
  info.eos_id = m.config.eos_id;
  info.source = "teacher samples from " + o.source_model + " (temperature " +
                std::to_string(o.temperature) + ", seed " + std::to_string(o.seed) + ")";
  TokenWriter w(o.out, o.length, info);
  int64_t done = 0;
  while (done < o.count) {
    const int64_t b = std::min(o.batch, o.count - done);
    SamplingOptions so{o.temperature, o.top_p, o.seed + uint64_t(done)};
    at::Tensor prompt = at::full({b, 1}, bos, at::kLong);
    at::Tensor cont = generate(m, prompt, o.length - 1, so);  // [b, length-1]
    at::Tensor rows = at::cat({prompt, cont}, 1).to(at::kLong).contiguous();
    for (int64_t r = 0; r < b; ++r) {
      std::vector<uint32_t> row(static_cast<size_t>(o.length));
      for (int64_t t = 0; t < o.length; ++t) row[size_t(t)] = uint32_t(rows[r][t].item<int64_t>());
      w.add_row(row);
    }
    done += b;
    if (progress) progress(uint64_t(done), uint64_t(o.count));
  }
  info.tokens = o.count * o.length;
  w.finish();
  return done;
}

}  // namespace dms
