// Which rows make each global batch: a seeded permutation per epoch, a resumable
// cursor, and each rank's contiguous slice of the global batch (DESIGN.md §5).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "data/token_file.h"

namespace dms {

// Permutation of [0, n) for `epoch`, from (seed, epoch) only.
std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int64_t epoch);

struct DataCursor {
  int64_t epoch = 0;
  int64_t offset = 0;  // samples of this epoch already consumed
};

struct LocalBatch {
  at::Tensor tokens;          // [b, T] int64: this rank's rows
  int64_t first_index = 0;    // index of row 0 within the global batch (noise key)
  std::vector<int64_t> rows;  // dataset row ids
};

class BatchLoader {
 public:
  // global_batch rows per step, split into `world` equal contiguous slices.
  BatchLoader(const TokenData& data, int64_t global_batch, uint64_t seed, int rank = 0,
              int world = 1);
  // This rank's slice of the next global batch; advances the cursor past the whole batch.
  LocalBatch next();
  DataCursor cursor;

 private:
  const TokenData& data_;
  int64_t global_, seed_;
  int rank_, world_;
  std::vector<int64_t> order_;
  int64_t order_epoch_ = -1;
};

}  // namespace dms
