#include "data/loader.h"

#include <numeric>
#include <random>
#include <stdexcept>

namespace dms {

std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(seed * 1000003ull + uint64_t(epoch) * 0x9e3779b97f4a7c15ull + 17);
  // Fisher-Yates with our own bounded draw, so the order is the same on every platform.
  for (int64_t i = n - 1; i > 0; --i) {
    const int64_t j = int64_t(rng() % uint64_t(i + 1));
    std::swap(order[size_t(i)], order[size_t(j)]);
  }
  return order;
}

BatchLoader::BatchLoader(const TokenData& data, int64_t global_batch, uint64_t seed, int rank,
                         int world)
    : data_(data), global_(global_batch), seed_(int64_t(seed)), rank_(rank), world_(world) {
  if (global_batch % world != 0)
    throw std::invalid_argument("global batch must be a multiple of the world size");
}

LocalBatch BatchLoader::next() {
  std::vector<int64_t> global;
  while (int64_t(global.size()) < global_) {
    if (order_epoch_ != cursor.epoch) {
      order_ = epoch_order(data_.n_rows, uint64_t(seed_), cursor.epoch);
      order_epoch_ = cursor.epoch;
    }
    global.push_back(order_[size_t(cursor.offset)]);
    if (++cursor.offset == data_.n_rows) {
      cursor.offset = 0;
      cursor.epoch++;
    }
  }
  const int64_t per = global_ / world_;
  LocalBatch b;
  b.first_index = per * rank_;
  b.rows.assign(global.begin() + b.first_index, global.begin() + b.first_index + per);
  b.tokens = data_.rows(b.rows);
  return b;
}

}  // namespace dms
