// dms data prepare / dms data sample: token files for a retrofit.
#include <filesystem>
#include <iostream>

#include "checkpoints/load_model.h"
#include "data/prepare.h"
#include "common/error.h"
#include "trainer/cli/cli.h"
#include "trainer/monitor/metrics.h"

namespace dms {

void add_data_command(CLI::App& app) {
  CLI::App* data = app.add_subcommand(
      "data", "Make token files: 'prepare' from text, 'sample' from the model itself");
  data->require_subcommand(1);

  auto p = std::make_shared<PrepareOptions>();
  CLI::App* prep = data->add_subcommand(
      "prepare",
      "Tokenize .txt/.jsonl files with SentencePiece, add BOS (and EOS), pack into rows of "
      "--seq-len tokens and write HDF5 (train to --out, held-out documents to <out>.val.h5).");
  prep->add_option("--tokenizer", p->tokenizer, "SentencePiece .model")->required();
  prep->add_option("--input", p->inputs, "Input files (.txt or .jsonl)")->required();
  prep->add_option("--out", p->out, "Output .h5")->required();
  prep->add_option("--seq-len", p->seq_len, "Tokens per row")->capture_default_str();
  prep->add_option("--val-fraction", p->val_fraction, "Share of documents held out")
      ->capture_default_str();
  prep->add_option("--doc-sep", p->doc_sep, ".txt documents split at 'blank' lines or each 'line'")
      ->capture_default_str();
  prep->add_option("--field", p->jsonl_field, "JSONL field holding the text")
      ->capture_default_str();
  prep->add_option("--seed", p->seed, "Seed of the train/validation split")->capture_default_str();
  prep->callback([p] {
    Progress bar("prepare", 1000);
    PrepareResult r = prepare_data(*p, [&](uint64_t done, uint64_t total) {
      bar.update(int64_t(1000.0 * double(done) / double(std::max<uint64_t>(1, total))));
    });
    bar.finish();
    std::cout << "wrote " << r.train_path << " (" << r.train_rows << " rows) and " << r.val_path
              << " (" << r.val_rows << " rows) from " << r.documents << " documents, " << r.tokens
              << " tokens\n";
  });

  auto s = std::make_shared<SampleOptions>();
  auto model = std::make_shared<std::string>();
  CLI::App* samp = data->add_subcommand(
      "sample", "Sample rows from the model itself (no corpus needed), each starting at BOS.");
  samp->add_option("--model", *model, "Model to sample from")->required();
  samp->add_option("--count", s->count, "Rows")->capture_default_str();
  samp->add_option("--length", s->length, "Tokens per row")->capture_default_str();
  samp->add_option("--temperature", s->temperature, "Sampling temperature")->capture_default_str();
  samp->add_option("--top-p", s->top_p, "Nucleus mass")->capture_default_str();
  samp->add_option("--seed", s->seed, "Sampling seed")->capture_default_str();
  samp->add_option("--out", s->out, "Output .h5")->required();
  samp->callback([s, model] {
    Model m = load_model(*model);
    s->source_model = *model;
    Progress bar("sample", s->count);
    sample_teacher_data(m, *s, [&](uint64_t d, uint64_t) { bar.update(int64_t(d)); });
    bar.finish();
    std::cout << "wrote " << s->out << " (" << s->count << " rows x " << s->length << ")\n";
  });
}

}  // namespace dms
