// `dms retrofit --nproc N`: the binary spawns N local workers of itself (with the
// torchrun environment variables set), supervises them, forwards SIGINT/SIGTERM, stops
// the others when one fails, and exits with the first failure's code.
#pragma once
#include <string>
#include <vector>

namespace dms {

// main() records its arguments here so the launcher can re-run the same command.
void set_program_args(int argc, char** argv);

// Runs N workers; returns the exit code for the launcher. grace_s: how long workers get
// to finish after SIGTERM before SIGKILL.
int launch_local_workers(int nproc, double grace_s = 30.0);

}  // namespace dms
