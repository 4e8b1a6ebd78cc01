// dms retrofit / dms export: the main job and its output.
#include <iostream>

#include "common/error.h"
#include "trainer/cli/cli.h"
#include "trainer/cli/commands.h"
#include "trainer/dist/launcher.h"
#include "trainer/eval/export_run.h"
#include "trainer/monitor/report.h"
#include "trainer/trainer.h"

namespace dms {

void add_retrofit_command(CLI::App& app) {
  // The config and the parse problems live as long as the app (callbacks run in parse()).
  struct State {
    RetrofitConfig cfg;
    std::vector<std::string> errors;
  };
  auto st = std::make_shared<State>();
  CLI::App* cmd = app.add_subcommand(
      "retrofit",
      "Teach a model DMS: distil from the unchanged model while the target compression ratio "
      "is annealed from 1 to --target-cr; checkpoints, metrics.jsonl and config.json go to "
      "--out. Options can also come from a TOML file: dms --config run.toml retrofit (keys under "
      "[retrofit], named like the options: max-steps = 500).");
  add_fields(cmd, retrofit_fields(), st->cfg, st->errors);
  cmd->callback([st] {
    st->cfg.check_parsed(st->errors);
    if (st->cfg.dist.nproc > 1 && !std::getenv("RANK")) {
      const int code = launch_local_workers(int(st->cfg.dist.nproc));
      if (code != 0) std::exit(code);
      return;
    }
    const int code = run_retrofit(st->cfg);
    if (code != 0) std::exit(code);
  });

  auto e = std::make_shared<Parsed<ExportRequest>>();
  CLI::App* ex = app.add_subcommand(
      "export",
      "Write a retrofit's checkpoint as a Hugging Face directory: config.json with the dms_* "
      "fields, model.safetensors with the official DMS tensor names, tokenizer files and "
      "dms_report.json (measured compression per layer and head). Needs only the run's "
      "checkpoints and the base model they record.");
  add_fields(ex, export_fields(), e->cfg, e->errors);
  auto ro = std::make_shared<ReportOptions>();
  CLI::App* rep = app.add_subcommand(
      "report",
      "One self-contained HTML page about a run (works while it runs): loss and compression "
      "curves, eviction heat map per layer and head, cache sizes, throughput, config, eval table. "
      "--format png writes the charts as PNG files into --out instead.");
  rep->add_option("--run", ro->run, "Run directory")->required();
  rep->add_option("--out", ro->out, "report.html (or a directory with --format png)")->required();
  rep->add_option("--format", ro->format, "html | png")->capture_default_str();
  rep->callback([ro] {
    const int n = write_report(*ro);
    std::cout << "wrote " << ro->out << " (" << n << " charts)\n";
  });

  ex->callback([e] {
    e->check(export_fields());
    const std::string ck = export_run(e->cfg);
    std::cout << "exported " << ck << " -> " << e->cfg.out << "\n";
  });
}

}  // namespace dms
