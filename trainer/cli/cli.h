// Subcommands of the `dms` binary. Each add_* registers its options and a
// callback on the CLI11 app; errors are thrown (InputError -> exit 2).
#pragma once
#include <CLI/CLI.hpp>

namespace dms {

void add_generate_command(CLI::App& app);
void add_inspect_command(CLI::App& app);
void add_retrofit_command(CLI::App& app);  // retrofit + export
void add_eval_command(CLI::App& app);
void add_data_command(CLI::App& app);
void add_plan_command(CLI::App& app);  // per-device memory and FLOPs of a retrofit

}  // namespace dms
