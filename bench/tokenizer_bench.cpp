// Tokenizer speed, as ratios measured in one run:
//  1. our single-threaded encode against Hugging Face `tokenizers` (the pinned reference in
//     .venv, driven by scripts/reference_tokenizer.py bench) on the same lines of text, one
//     line per call on both sides;
//  2. `dms data prepare` on 2 threads against 1 on the same corpus (the output is identical;
//     the benchmark checks that too).
// Peak resident memory of the process is printed at the end.
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "bench/bench_util.h"
#include "common/sha256.h"
#include "data/prepare.h"
#include "data/tokenizer.h"

using namespace dms;

namespace {

std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot read");
  std::vector<std::string> lines;
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  return lines;
}

// The reference's tokens/s from `reference_tokenizer.py bench` (a JSON line on stdout).
nlohmann::json reference_bench(const std::string& src, const std::string& tok,
                               const std::string& text, int repeat) {
  const std::string cmd = src + "/.venv/bin/python " + src +
                          "/scripts/reference_tokenizer.py bench --tokenizer '" + tok +
                          "' --text '" + text + "' --repeat " + std::to_string(repeat);
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) throw std::runtime_error("cannot run " + cmd);
  std::string out;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  if (pclose(p) != 0)
    throw std::runtime_error("the reference failed (run scripts/setup.sh --reference): " + cmd);
  return nlohmann::json::parse(out);
}

// Our encode over the same lines, `repeat` times -> {tokens, seconds}.
std::pair<int64_t, double> our_encode(const Tokenizer& tok, const std::vector<std::string>& lines,
                                      int repeat) {
  for (const auto& l : lines) tok.encode(l);  // warm-up, as the reference does
  int64_t tokens = 0;
  const double t0 = bench::now_s();
  for (int r = 0; r < repeat; ++r)
    for (const auto& l : lines) tokens += int64_t(tok.encode(l).size());
  return {tokens, bench::now_s() - t0};
}

// A corpus of `mb` MiB for data prepare: the text's lines shuffled into paragraphs.
std::string make_corpus(const std::vector<std::string>& lines, int mb, const std::string& dir) {
  const std::string path = dir + "/tokenizer_bench_corpus.txt";
  std::ofstream out(path, std::ios::binary);
  uint64_t x = 88172645463325252ull, bytes = 0;
  while (bytes < uint64_t(mb) << 20) {
    for (int k = 0; k < 6; ++k) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      const std::string& l = lines[x % lines.size()];
      if (l.find_first_not_of(" \t") == std::string::npos) continue;
      out << l << "\n";
      bytes += l.size() + 1;
    }
    out << "\n";
  }
  return path;
}

double prepare_seconds(PrepareOptions o, int threads, const std::string& out) {
  o.threads = threads;
  o.out = out;
  const double t0 = bench::now_s();
  prepare_data(o);
  return bench::now_s() - t0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Tokenizer speed: ours vs Hugging Face tokenizers (1 thread), data prepare 2 threads vs 1"};
  const std::string src = DMS_SOURCE_DIR;
  std::string tokenizer = std::string(DMS_DEFAULT_ASSETS) + "/tokenizers/qwen3/tokenizer.json";
  std::string text = src + "/tests/data/tokenizer_corpus.txt";
  int repeat = 5, corpus_mb = 8, reps = 3;
  std::string json_out, tmp = "/tmp";
  app.add_option("--tokenizer", tokenizer, "Tokenizer (any form dms reads)");
  app.add_option("--text", text, "Text whose lines are encoded");
  app.add_option("--repeat", repeat, "Passes over the text")->check(CLI::Range(1, 1000));
  app.add_option("--corpus-mb", corpus_mb, "Size of the data prepare corpus")
      ->check(CLI::Range(1, 4096));
  app.add_option("--reps", reps, "data prepare runs per thread count (median)")
      ->check(CLI::Range(1, 50));
  app.add_option("--tmp", tmp, "Where the prepare corpus and outputs go");
  app.add_option("--json", json_out, "Also write the figures to this file");
  CLI11_PARSE(app, argc, argv);

  const double l0 = bench::now_s();
  Tokenizer tok = load_tokenizer(tokenizer);
  const double load_s = bench::now_s() - l0;
  const auto lines = read_lines(text);
  const auto [ours_tokens, ours_s] = our_encode(tok, lines, repeat);
  const nlohmann::json ref = reference_bench(src, tokenizer, text, repeat);
  const double ours_tps = double(ours_tokens) / ours_s, ref_tps = ref["tokens_per_s"].get<double>();
  if (ref["tokens"].get<int64_t>() != ours_tokens)
    std::cerr << "warning: token counts differ (ours " << ours_tokens << ", reference "
              << ref["tokens"] << ")\n";

  PrepareOptions o;
  o.tokenizer = tokenizer;
  o.inputs = {make_corpus(lines, corpus_mb, tmp)};
  o.seq_len = 1024;
  o.val_fraction = 0.01;
  std::vector<double> t1, t2;
  for (int r = 0; r < reps; ++r) {
    t1.push_back(prepare_seconds(o, 1, tmp + "/tokenizer_bench_1.h5"));
    t2.push_back(prepare_seconds(o, 2, tmp + "/tokenizer_bench_2.h5"));
  }
  const bool same =
      sha256_file(tmp + "/tokenizer_bench_1.h5") == sha256_file(tmp + "/tokenizer_bench_2.h5");
  const double p1 = bench::median(t1), p2 = bench::median(t2);
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);

  // The prepare runs include loading the tokenizer (load_s) on one thread; without it:
  const double steady = (p1 - load_s) / (p2 - load_s);
  std::cout << "tokenizer: " << tok.kind() << "  " << tokenizer << " (loaded in "
            << bench::fmt(load_s) << " s)\n";
  bench::print_table({"measure", "ours", "baseline", "ratio"},
                     {{"encode tokens/s, 1 thread (vs HF tokenizers)", bench::fmt(ours_tps, 0),
                       bench::fmt(ref_tps, 0), bench::fmt(ours_tps / ref_tps) + "x"},
                      {"data prepare " + std::to_string(corpus_mb) + " MiB, s (2 threads vs 1)",
                       bench::fmt(p2), bench::fmt(p1), bench::fmt(p1 / p2) + "x"}});
  std::cout << "data prepare without the tokenizer load: " << bench::fmt(steady) << "x\n"
            << "2-thread output identical to 1-thread: " << (same ? "yes" : "NO") << "\n"
            << "peak RSS: " << bench::mib(int64_t(ru.ru_maxrss) * 1024) << "\n";
  bench::write_json(json_out, {{"encode_tokens_per_s", ours_tps},
                               {"reference_tokens_per_s", ref_tps},
                               {"encode_ratio", ours_tps / ref_tps},
                               {"prepare_1_thread_s", p1},
                               {"prepare_2_threads_s", p2},
                               {"prepare_speedup", p1 / p2},
                               {"prepare_speedup_without_load", steady},
                               {"tokenizer_load_s", load_s},
                               {"identical", same},
                               {"machine", bench::machine_info()}});
  for (const char* f :
       {"/tokenizer_bench_1.h5", "/tokenizer_bench_2.h5", "/tokenizer_bench_1.val.h5",
        "/tokenizer_bench_2.val.h5", "/tokenizer_bench_corpus.txt"})
    std::remove((tmp + f).c_str());
  return same ? 0 : 1;
}
