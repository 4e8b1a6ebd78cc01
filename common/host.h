// What this host gives the process: available memory, the cores it may run on, the ranks
// started beside it. Read once where a decision needs them (memory checks, thread counts).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dms {

// MemAvailable of /proc/meminfo in bytes; 0 when unknown.
double mem_available_bytes();

// Ranks started on this host (torchrun and `--nproc` set LOCAL_WORLD_SIZE), which share
// its memory and cores; 1 when unset or malformed.
int local_ranks();

// InputError "<what>: ... needs X GiB, Y GiB available" when `bytes` exceeds the memory
// available now (checked before a large allocation; no check when unknown).
void require_fits_in_memory(uint64_t bytes, const std::string& what);

// The ids of the cores this process may run on (its CPU affinity mask, which taskset, cgroups'
// cpusets and schedulers set); empty when it cannot be read.
std::vector<int> affinity_cores();
// How many: at least 1.
int usable_cores();

// Sets the intra-op thread count (LibTorch, OpenMP, BLAS). requested 0: the default, the
// usable cores shared among the local ranks (OMP_NUM_THREADS, when set, wins). More threads
// than usable cores only spin against each other: capped there, with a warning on stderr.
// Returns the count in use.
int use_threads(int64_t requested);

}  // namespace dms
