// Fuzzes `dms --config FILE.toml <command>`: CLI11's TOML config reader feeding our option
// tables (trainer/config/options.h add_fields, the tables of trainer/config and
// trainer/cli/commands.cpp) and their checks. The app is set up as trainer/cli/main.cpp
// does (one subcommand required, --config, unknown keys are errors) with every command
// registered from the same tables and extra options as trainer/cli/cli_*.cpp; the command
// callbacks run the checks those commands run before any work (Parsed::check,
// RetrofitConfig::validate) and nothing else.
// Input: byte 0 picks the command line ("dms --config F <command>", for each command, or
// none); the rest is the TOML file.
// Expected rejection: CLI::ParseError (CLI11's own: bad TOML, unknown key, missing
// required option; exit 2 in main.cpp), dms::InputError (bad values) and CLI11's
// flag-value exception (is_flag_value_error; exit 2 in main.cpp).
// Seeds: DMS_FUZZ_WRITE_SEEDS=DIR writes, per command, a TOML file setting every option of
// its table to its default (the keys as users write them).
#include <CLI/CLI.hpp>

#include "fuzz/fuzz_util.h"
#include "trainer/cli/commands.h"
#include "trainer/config/retrofit_config.h"

namespace {

using namespace dms;

// The subcommands of the real app with their option tables; callbacks only check.
void add_commands(CLI::App& app) {
  auto r = std::make_shared<Parsed<RetrofitConfig>>();
  CLI::App* cmd = app.add_subcommand("retrofit", "retrofit");
  add_fields(cmd, retrofit_fields(), r->cfg, r->errors);
  cmd->callback([r] { r->cfg.check_parsed(r->errors); });

  auto ex = std::make_shared<Parsed<ExportRequest>>();
  CLI::App* exc = app.add_subcommand("export", "export");
  add_fields(exc, export_fields(), ex->cfg, ex->errors);
  exc->callback([ex] { ex->check(export_fields()); });

  auto ro = std::make_shared<std::array<std::string, 3>>();
  (*ro)[2] = "html";
  CLI::App* rep = app.add_subcommand("report", "report");
  rep->add_option("--run", (*ro)[0], "Run directory")->required();
  rep->add_option("--out", (*ro)[1], "report.html")->required();
  rep->add_option("--format", (*ro)[2], "html | png")->capture_default_str();
  rep->callback([ro] {});  // keeps the options' targets alive, as the real callback does

  auto ev = std::make_shared<Parsed<EvalConfig>>();
  CLI::App* evc = app.add_subcommand("eval", "eval");
  add_fields(evc, eval_fields(), ev->cfg, ev->errors);
  evc->callback([ev] { ev->check(eval_fields()); });

  auto g = std::make_shared<Parsed<GenerateConfig>>();
  CLI::App* gc = app.add_subcommand("generate", "generate");
  add_fields(gc, generate_fields(), g->cfg, g->errors);
  gc->callback([g] { g->check(generate_fields()); });

  auto path = std::make_shared<std::string>();
  CLI::App* ins = app.add_subcommand("inspect", "inspect");
  ins->add_option("path", *path, "File or directory to describe")->required();
  ins->callback([path] {});

  auto pl = std::make_shared<Parsed<PlanConfig>>();
  CLI::App* plc = app.add_subcommand("plan", "plan");
  add_fields(plc, plan_fields(), pl->cfg, pl->errors);
  plc->callback([pl] { pl->check(plan_fields()); });

  CLI::App* data = app.add_subcommand("data", "data");
  data->require_subcommand(1);
  auto p = std::make_shared<Parsed<PrepareOptions>>();
  CLI::App* prep = data->add_subcommand("prepare", "prepare");
  prep->add_option("--input", p->cfg.inputs, "Input files (.txt or .jsonl)")->required();
  add_fields(prep, prepare_fields(), p->cfg, p->errors);
  prep->callback([p] { p->check(prepare_fields()); });
  auto s = std::make_shared<Parsed<SampleConfig>>();
  CLI::App* samp = data->add_subcommand("sample", "sample");
  add_fields(samp, sample_fields(), s->cfg, s->errors);
  samp->callback([s] { s->check(sample_fields()); });
}

const std::vector<std::vector<std::string>> kCommands = {
    {"retrofit"}, {"export"},          {"report"},         {"eval"}, {"generate"},
    {"inspect"},  {"data", "prepare"}, {"data", "sample"}, {"plan"}, {}};

template <class C>
std::string toml_section(const std::string& section, const std::vector<Field<C>>& table,
                         const std::string& extra = "") {
  const C defaults{};
  std::string t = "[" + section + "]\n" + extra;
  for (const Field<C>& f : table) {
    nlohmann::json v = f.get(defaults);
    if (f.required && v.is_string() && v.get<std::string>().empty()) v = "x";
    if (f.list && v.is_array() && v.empty()) v = nlohmann::json::array({2, 4});
    t += f.name + " = " + v.dump() + "\n";
  }
  return t;
}

void write_seeds() {
  auto seed = [](int command, const std::string& name, const std::string& toml) {
    fuzz::write_seed(name + ".toml", std::string(1, char(command)) + toml);
  };
  seed(0, "retrofit", toml_section("retrofit", retrofit_fields()));
  seed(1, "export", toml_section("export", export_fields()));
  seed(2, "report", "[report]\nrun = \"r\"\nout = \"report.html\"\nformat = \"png\"\n");
  seed(3, "eval", toml_section("eval", eval_fields()));
  seed(4, "generate", toml_section("generate", generate_fields()));
  seed(5, "inspect", "[inspect]\npath = \"model.bin\"\n");
  seed(6, "data-prepare",
       toml_section("data.prepare", prepare_fields(), "input = [\"a.txt\", \"b.jsonl\"]\n"));
  seed(7, "data-sample", toml_section("data.sample", sample_fields()));
  seed(8, "plan", toml_section("plan", plan_fields()));
  seed(9, "none", "# comment\nmax-steps = 5\n[retrofit]\nmax_steps = 500\nlr = 3e-5\n");
  seed(0, "retrofit-small",
       "[retrofit]\nmodel = \"m.bin\"\ndata = \"d.h5\"\nout = \"run\"\nmax-steps = 4\n"
       "keep-at-cr = [2, 4]\nresume = true\n");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (fuzz::seed_dir()) write_seeds();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const std::string path = fuzz::write_file("run.toml", data + 1, size - 1);
  std::vector<std::string> args = {"dms", "--config", path};
  for (const auto& a : kCommands[data[0] % kCommands.size()]) args.push_back(a);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());

  CLI::App app{"dms-retrofit"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Show help for every subcommand");
  app.set_config("--config", "",
                 "Read command options from a TOML file (sections named by command)");
  app.allow_config_extras(CLI::config_extras_mode::error);
  add_commands(app);
  try {
    fuzz::accepts([&] { app.parse(int(argv.size()), argv.data()); });
  } catch (const CLI::ParseError& e) {
    if (std::getenv("DMS_FUZZ_VERBOSE")) std::fprintf(stderr, "rejected: %s\n", e.what());
  } catch (const std::logic_error& e) {
    // A true/false option with a non-boolean value: main.cpp reports it as a usage error
    // (exit 2) by the same test; anything else is a finding.
    if (!dms::is_flag_value_error(e)) throw;
  }
  return 0;
}
