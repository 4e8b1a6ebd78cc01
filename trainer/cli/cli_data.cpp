// dms data prepare / dms data sample: token files for a retrofit.
#include <filesystem>
#include <iostream>

#include "checkpoints/load_model.h"
#include "common/error.h"
#include "data/prepare.h"
#include "trainer/cli/cli.h"
#include "trainer/cli/commands.h"
#include "trainer/monitor/metrics.h"

namespace dms {

void add_data_command(CLI::App& app) {
  CLI::App* data = app.add_subcommand(
      "data", "Make token files: 'prepare' from text, 'sample' from the model itself");
  data->require_subcommand(1);

  auto p = std::make_shared<Parsed<PrepareOptions>>();
  CLI::App* prep = data->add_subcommand(
      "prepare",
      "Tokenize .txt/.jsonl files (or chat conversations with --chat) with the model's own "
      "tokenizer, frame each document as the model was trained (see --bos/--eos), pack into "
      "rows of --seq-len tokens and write HDF5 (train to --out, held-out documents to "
      "<out>.val.h5).");
  prep->add_option("--input", p->cfg.inputs, "Input files (.txt or .jsonl)")->required();
  add_fields(prep, prepare_fields(), p->cfg, p->errors);
  prep->callback([p] {
    p->check(prepare_fields());
    Progress bar("prepare", 1000);
    PrepareResult r = prepare_data(p->cfg, [&](uint64_t done, uint64_t total) {
      bar.update(int64_t(1000.0 * double(done) / double(std::max<uint64_t>(1, total))));
    });
    bar.finish();
    std::cout << "wrote " << r.train_path << " (" << r.train_rows << " rows) and " << r.val_path
              << " (" << r.val_rows << " rows) from " << r.documents << " documents, " << r.tokens
              << " tokens\n";
  });

  auto s = std::make_shared<Parsed<SampleConfig>>();
  CLI::App* samp = data->add_subcommand(
      "sample", "Sample rows from the model itself (no corpus needed), each starting at BOS.");
  add_fields(samp, sample_fields(), s->cfg, s->errors);
  samp->callback([s] {
    s->check(sample_fields());
    SampleOptions& o = s->cfg.opts;
    Model m = load_model(s->cfg.model);
    o.source_model = s->cfg.model;
    Progress bar("sample", o.count);
    sample_teacher_data(m, o, [&](uint64_t d, uint64_t) { bar.update(int64_t(d)); });
    bar.finish();
    std::cout << "wrote " << o.out << " (" << o.count << " rows x " << o.length << ")\n";
  });
}

}  // namespace dms
