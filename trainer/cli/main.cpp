// `dms`: the command-line entry point. Exit codes: 0 ok, 1 runtime failure,
// 2 bad usage or bad input (one line on stderr naming the file and the problem).
#include <malloc.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>

#include "common/error.h"
#include "common/h5.h"
#include "common/host.h"
#include "common/mapped_file.h"
#include "trainer/cli/cli.h"
#include "trainer/config/options.h"
#include "trainer/dist/distributed.h"
#include "trainer/dist/launcher.h"

// Large activations (attention scores) would otherwise be mmap'd and unmapped on every
// op, paying page faults each time; keeping them in the heap lets freed blocks be reused.
static void tune_allocator() {
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, -1);
}

// The TOML file of `--config FILE` / `--config=FILE`, checked before CLI11 reads it: CLI11
// opens it with an ifstream, which would block forever on a FIFO and read a device or a
// multi-gigabyte file to the end. "" when there is none.
static std::string config_file_arg(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--config") == 0 && i + 1 < argc) return argv[i + 1];
    if (std::strncmp(argv[i], "--config=", 9) == 0) return argv[i] + 9;
  }
  return "";
}

static void check_config_file(const std::string& path) {
  if (path.empty()) return;
  dms::require(dms::require_regular_file(path) <= (1u << 20), path,
               "--config: a TOML file of options over 1 MiB is not an options file");
}

// Every failure is reported on one line (a wrapped library message may hold several).
static std::string first_line(const std::string& s) {
  const size_t nl = s.find('\n');
  return nl == std::string::npos ? s : s.substr(0, nl) + " [...]";
}

// One line for every usage error (CLI11 prints its message plus a help hint on two).
static int usage_error(const CLI::App& app, const CLI::ParseError& e, const std::string& config) {
  if (e.get_exit_code() == 0) return app.exit(e);  // --help, --help-all
  std::string what = e.what();
  if (dynamic_cast<const CLI::ConfigError*>(&e)) {
    const std::string extra = "INI was not able to parse ";
    if (what.rfind(extra, 0) == 0)
      what = "unknown key '" + what.substr(extra.size()) + "' (no such option of that command)";
    what = (config.empty() ? "--config" : config) + ": " + what;
  }
  std::cerr << "dms: error: " << what << " (see dms --help)\n";
  return 2;
}

// SIGINT/SIGTERM outside a retrofit's training loop (which checkpoints first): exit
// 128 + signal at once, without exit-time destructors (HDF5's would run on handles an
// interrupted call left half-made). Files are written under temporary names and renamed
// when complete, so an interrupted command leaves no half-written file under a final name.
extern "C" void exit_on_stop_signal(int sig) {
  static const char msg[] = "dms: interrupted by a signal; nothing was finished\n";
  ssize_t n = ::write(2, msg, sizeof msg - 1);
  (void)n;
  ::_exit(128 + sig);
}

int main(int argc, char** argv) {
  dms::h5::skip_exit_cleanup();  // first: before any HDF5 call (common/h5.h says why)
  tune_allocator();
  // A peer rank that dies leaves its sockets closed; writing to one must become an error
  // our collectives report ("lost rank N"), not a silent SIGPIPE death of this rank.
  std::signal(SIGPIPE, SIG_IGN);
  std::signal(SIGINT, exit_on_stop_signal);
  std::signal(SIGTERM, exit_on_stop_signal);
  dms::set_program_args(argc, argv);
  // The cores this process may run on, shared among the ranks of this host (--threads and
  // OMP_NUM_THREADS override).
  dms::use_threads(0);
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
  const std::string config = config_file_arg(argc, argv);
  try {
    check_config_file(config);
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return usage_error(app, e, config);
  } catch (const std::logic_error& e) {
    if (!dms::is_flag_value_error(e)) {
      std::cerr << "dms: failed: " << first_line(e.what()) << "\n";
      return 1;
    }
    std::cerr << "dms: error: " << (config.empty() ? "" : config + " or ")
              << "the command line: " << dms::kFlagValueMessage << "\n";
    return 2;
  } catch (const dms::DistError& e) {
    std::cerr << "dms: distributed failure: " << first_line(e.what()) << "\n";
    return 1;
  } catch (const dms::InputError& e) {
    std::cerr << "dms: error: " << first_line(e.what()) << "\n";
    return 2;
  } catch (const c10::Error& e) {
    // LibTorch's message carries a C++ backtrace over many lines: its first line is the cause
    // (e.g. "DefaultCPUAllocator: not enough memory").
    std::cerr << "dms: failed: " << first_line(e.what_without_backtrace()) << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "dms: failed: " << first_line(e.what()) << "\n";
    return 1;
  }
  return 0;
}
