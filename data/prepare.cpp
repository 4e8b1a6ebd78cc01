#include "data/prepare.h"

#include <filesystem>
#include <fstream>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <utility>
#include <nlohmann/json.hpp>

#include "common/mapped_file.h"
#include "data/token_file.h"
#include "common/error.h"
#include "data/tokenizer.h"
#include "data/utf8.h"
#include "model/generate.h"

namespace fs = std::filesystem;

namespace dms {

std::string validation_path(const std::string& train_path) {
  fs::path p(train_path);
  return (p.parent_path() / (p.stem().string() + ".val" + p.extension().string())).string();
}

namespace {

// Packs documents into fixed rows for one split; the tail that fills no row is dropped.
struct Packer {
  TokenWriter writer;
  int64_t T, documents = 0, tokens = 0;
  std::vector<uint32_t> buf;
  Packer(const std::string& path, int64_t seq_len, const TokenFileInfo& info)
      : writer(path, seq_len, info), T(seq_len) {}
  void add(const std::vector<int64_t>& doc) {
    ++documents;
    tokens += int64_t(doc.size());
    for (int64_t id : doc) {
      buf.push_back(uint32_t(id));
      if (int64_t(buf.size()) == T) {
        writer.add_row(buf);
        buf.clear();
      }
    }
  }
  void finish() { writer.finish(documents, tokens); }
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
  require(o.threads >= 1 && o.threads <= 256, "--threads", "must be in [1, 256]");
}

// Checks that every input exists with a type we read; returns their total size in bytes.
uint64_t input_bytes(const std::vector<std::string>& inputs, bool chat) {
  uint64_t total = 0;
  for (const auto& f : inputs) {
    require_regular_file(f);  // before anything opens it: a FIFO would block
    const std::string ext = fs::path(f).extension().string();
    if (chat)
      require(ext == ".jsonl" || ext == ".json", f, "--chat reads JSON lines (.jsonl)");
    else
      require(ext == ".txt" || ext == ".jsonl" || ext == ".json", f,
              "unsupported input type (use .txt or .jsonl)");
    total += fs::file_size(f);
  }
  return total;
}

// The framing: the tokenizer's (or, for chat, none: the template frames each
// conversation), with --bos / --eos overriding either side.
Framing framing_of(const PrepareOptions& o, const Tokenizer& tok) {
  Framing f;
  if (o.chat) f.rule = "chat template";
  else f = tok.default_framing();
  if (o.bos != "default") {
    f.before = tok.framing_tokens(o.bos, "--bos");
    f.rule += ", --bos " + o.bos;
  }
  if (o.eos != "default") {
    f.after = tok.framing_tokens(o.eos, "--eos");
    f.rule += ", --eos " + o.eos;
  }
  return f;
}

TokenFileInfo token_file_info(const PrepareOptions& o, const Tokenizer& tok, const Framing& f) {
  TokenFileInfo info;
  info.vocab_size = tok.vocab_size();
  info.tokenizer_hash = tok.fingerprint();
  info.bos_id = tok.bos_id();
  info.eos_id = tok.eos_id();
  info.framing = tok.describe(f);
  for (const auto& f : o.inputs)
    info.source += (info.source.empty() ? "" : ", ") + fs::path(f).filename().string();
  if (o.chat)
    info.source += std::string(" (chat, reasoning ") +
                   (o.reasoning == Reasoning::Keep ? "kept" : "dropped") + ")";
  return info;
}

// One document as read: its text (or, for chat, its JSON record) and where it came from.
struct Doc {
  std::string text;
  std::string where;  // file:line
  bool json = false;  // a JSON-lines record
};

// Bytes read so far against the total, reported every 256 lines.
struct Progress {
  const std::function<void(uint64_t, uint64_t)>& report;
  uint64_t done = 0, total = 0;
};

// Splits input file f into documents (JSON-lines records, lines, or blank-line separated
// paragraphs, as the options say) and hands each to emit. Every line is checked to be
// UTF-8 first, so an error names the byte offset in the file.
void read_documents(const std::string& f, const PrepareOptions& o,
                    const std::function<void(Doc&&)>& emit, Progress& progress) {
  std::ifstream in(f, std::ios::binary);  // input_bytes checked it is a regular file
  require(bool(in), f, "cannot read");
  const bool jsonl = fs::path(f).extension() != ".txt";
  std::string line, doc;
  int64_t line_no = 0, doc_line = 1;
  uint64_t offset = 0;
  while (std::getline(in, line)) {
    ++line_no;
    const size_t bad = utf8::first_invalid(line);
    require(bad == utf8::npos, f,
            "invalid UTF-8 at byte " + std::to_string(offset + bad) + " (line " +
                std::to_string(line_no) + ")");
    offset += line.size() + 1;
    progress.done += line.size() + 1;
    const std::string where = f + ":" + std::to_string(line_no);
    if (jsonl) {
      if (line.find_first_not_of(" \t\r") != std::string::npos) emit({line, where, true});
    } else if (o.doc_sep == "line") {
      emit({line, where});
    } else if (line.find_first_not_of(" \t\r") == std::string::npos) {
      emit({std::move(doc), f + ":" + std::to_string(doc_line)});
      doc.clear();
    } else {
      if (doc.empty()) doc_line = line_no;
      doc += doc.empty() ? line : "\n" + line;
    }
    if (progress.report && (line_no % 256 == 0)) progress.report(progress.done, progress.total);
  }
  if (!doc.empty()) emit({std::move(doc), f + ":" + std::to_string(doc_line)});
}

nlohmann::ordered_json parse_record(const Doc& d) {
  try {
    return nlohmann::ordered_json::parse(d.text);
  } catch (const nlohmann::json::exception&) {
    throw InputError(d.where + ": not a JSON object");
  }
}

// Turns documents into framed ids; runs on the worker threads.
class DocEncoder {
 public:
  DocEncoder(const PrepareOptions& o, const Tokenizer& tok, Framing f)
      : o_(o), tok_(tok), framing_(std::move(f)) {
    if (o.chat) chat_ = std::make_unique<ChatRenderer>(tok, o.reasoning, o.chat_date);
  }
  // Empty when the document has no text.
  std::vector<int64_t> encode(const Doc& d) const {
    std::string text;
    if (chat_) {
      text = chat_->render(parse_record(d), d.where);
    } else if (d.json) {
      const nlohmann::ordered_json j = parse_record(d);
      require(j.is_object() && j.contains(o_.jsonl_field) && j[o_.jsonl_field].is_string(),
              d.where, "no string field '" + o_.jsonl_field + "' (see --field)");
      text = j[o_.jsonl_field].get<std::string>();
    } else {
      text = d.text;
    }
    if (text.find_first_not_of(" \t\r\n") == std::string::npos) return {};
    std::vector<int64_t> ids = framing_.before;
    try {
      for (int64_t id : tok_.encode(text)) ids.push_back(id);
    } catch (const InputError& e) {
      throw InputError(d.where + ": " + e.what());
    }
    ids.insert(ids.end(), framing_.after.begin(), framing_.after.end());
    return ids;
  }

 private:
  const PrepareOptions& o_;
  const Tokenizer& tok_;
  Framing framing_;
  std::unique_ptr<ChatRenderer> chat_;
};

// Encodes documents on `threads` threads, the caller's included: batches are handed out a
// document at a time (an atomic cursor), so the workers keep encoding while the caller
// reads the next batch and packs the previous one, and the caller joins the encoding when
// its batch is full. Results reach `sink` in input order: the output is the same for any
// thread count. The workers live as long as the run, so their per-thread BPE caches stay
// warm.
class ParallelEncoder {
 public:
  ParallelEncoder(const DocEncoder& enc, int64_t threads,
                  std::function<void(const std::vector<int64_t>&)> sink)
      : enc_(enc), sink_(std::move(sink)) {
    for (int64_t k = 1; k < threads; ++k) workers_.emplace_back([this] { work(); });
  }
  ~ParallelEncoder() {
    {
      std::lock_guard<std::mutex> l(m_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
  }

  void add(Doc&& d) {
    bytes_ += d.text.size();
    reading_.push_back(std::move(d));
    if (bytes_ >= kBatchBytes || reading_.size() >= kBatchDocs) cycle();
  }
  // Encodes and hands over everything added so far.
  void finish() {
    cycle();
    cycle();
  }

 private:
  // Finishes the batch in flight, puts the batch read so far in flight, and packs the
  // finished one while the workers start on the new one.
  void cycle() {
    take_documents(in_flight_.size());  // the caller joins the encoding
    {
      std::unique_lock<std::mutex> l(m_);
      // Every document encoded, and no worker still inside the old batch.
      finished_.wait(l, [this] { return done_ >= in_flight_.size() && active_ == 0; });
      if (error_) std::rethrow_exception(error_);
      std::swap(encoded_, packing_);
      std::swap(in_flight_, reading_);
      encoded_.assign(in_flight_.size(), {});
      next_ = 0;
      done_ = 0;
      ++generation_;
    }
    wake_.notify_all();
    reading_.clear();
    bytes_ = 0;
    for (const auto& v : packing_) sink_(v);
    packing_.clear();
  }

  // Encodes documents of the batch in flight (n of them) until none is left to take; a
  // failure is kept for cycle() to rethrow and stops the handing out.
  void take_documents(size_t n) {
    for (size_t i; (i = next_.fetch_add(1)) < n;) {
      std::exception_ptr err;
      try {
        encoded_[i] = enc_.encode(in_flight_[i]);
      } catch (...) {
        err = std::current_exception();
      }
      std::lock_guard<std::mutex> l(m_);
      if (err && !error_) error_ = err;
      if (++done_ >= n) finished_.notify_all();
      if (error_) {
        next_ = n;  // stop handing out work; count the rest as done
        done_ = n;
        finished_.notify_all();
        return;
      }
    }
  }

  void work() {
    uint64_t seen = 0;
    for (;;) {
      size_t n;
      {
        std::unique_lock<std::mutex> l(m_);
        wake_.wait(l, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        n = in_flight_.size();
        ++active_;
      }
      take_documents(n);
      std::lock_guard<std::mutex> l(m_);
      if (--active_ == 0) finished_.notify_all();
    }
  }

  static constexpr size_t kBatchBytes = 1 << 20, kBatchDocs = 4096;
  const DocEncoder& enc_;
  std::function<void(const std::vector<int64_t>&)> sink_;
  std::vector<Doc> reading_, in_flight_;
  std::vector<std::vector<int64_t>> encoded_, packing_;
  size_t bytes_ = 0;
  std::atomic<size_t> next_{0};
  size_t done_ = 0, active_ = 0;  // guarded by m_: documents done, workers in a batch
  std::mutex m_;
  std::condition_variable wake_, finished_;
  uint64_t generation_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
  std::vector<std::thread> workers_;  // last: they stop before the state they use goes
};

}  // namespace

PrepareResult prepare_data(const PrepareOptions& o,
                           const std::function<void(uint64_t, uint64_t)>& progress) {
  check_options(o);
  Tokenizer tok = load_tokenizer(o.tokenizer);
  Progress bytes{progress};
  bytes.total = input_bytes(o.inputs, o.chat);
  const Framing framing = framing_of(o, tok);
  TokenFileInfo info = token_file_info(o, tok, framing);
  DocEncoder encoder(o, tok, framing);

  PrepareResult r;
  r.train_path = o.out;
  r.val_path = validation_path(o.out);
  Packer train(r.train_path, o.seq_len, info), val(r.val_path, o.seq_len, info);
  int64_t docs = 0;
  ParallelEncoder parallel(encoder, o.threads, [&](const std::vector<int64_t>& ids) {
    if (ids.empty()) return;
    r.tokens += int64_t(ids.size());
    (goes_to_validation(o.seed, docs++, o.val_fraction) ? val : train).add(ids);
  });
  for (const auto& f : o.inputs) read_documents(f, o, [&](Doc&& d) { parallel.add(std::move(d)); }, bytes);
  parallel.finish();
  if (progress) progress(bytes.total, bytes.total);
  r.documents = docs;
  require(train.writer.rows() > 0, o.out,
          "the inputs hold fewer than one row of " + std::to_string(o.seq_len) +
              " tokens for training");
  train.finish();
  r.train_rows = train.writer.rows();
  r.val_rows = val.writer.rows();
  val.finish();
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
  w.finish(o.count, o.count * o.length);
  return done;
}

}  // namespace dms
