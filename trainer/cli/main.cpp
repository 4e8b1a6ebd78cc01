// `dms`: the command-line entry point. Exit codes: 0 ok, 1 runtime failure,
// 2 bad usage or bad input (one line on stderr naming the file and the problem).
#include <ATen/Parallel.h>
#include <malloc.h>

#include <csignal>
#include <cstdlib>
#include <iostream>
#include <thread>

#include "common/error.h"
#include "trainer/cli/cli.h"
#include "trainer/dist/distributed.h"
#include "trainer/dist/launcher.h"

// Large activations (attention scores) would otherwise be mmap'd and unmapped on every
// op, paying page faults each time; keeping them in the heap lets freed blocks be reused.
static void tune_allocator() {
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, -1);
}

int main(int argc, char** argv) {
  tune_allocator();
  // A peer rank that dies leaves its sockets closed; writing to one must become an error
  // our collectives report ("lost rank N"), not a silent SIGPIPE death of this rank.
  std::signal(SIGPIPE, SIG_IGN);
  dms::set_program_args(argc, argv);
  // Debian's OpenMP LibTorch may start with one thread; use the machine unless told.
  if (!std::getenv("OMP_NUM_THREADS"))
    at::set_num_threads(int(std::max(1u, std::thread::hardware_concurrency())));
  CLI::App app{
      "dms-retrofit: teach a pretrained decoder LLM Dynamic Memory Sparsification "
      "(learned KV-cache eviction) by distillation, then export and evaluate it."};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Show help for every subcommand");
  // Options of any command from a TOML file: `dms --config run.toml retrofit ...` with the
  // command's options under [retrofit] (key = option name without dashes: max-steps = 500).
  app.set_config("--config", "",
                 "Read command options from a TOML file (sections named by command)");
  // A key that names no option is a mistake (a typo would silently keep the default).
  app.allow_config_extras(CLI::config_extras_mode::error);
  dms::add_data_command(app);
  dms::add_retrofit_command(app);
  dms::add_eval_command(app);
  dms::add_generate_command(app);
  dms::add_inspect_command(app);
  dms::add_plan_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : 2;
  } catch (const dms::DistError& e) {
    std::cerr << "dms: distributed failure: " << e.what() << "\n";
    return 1;
  } catch (const dms::InputError& e) {
    std::cerr << "dms: error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "dms: failed: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
