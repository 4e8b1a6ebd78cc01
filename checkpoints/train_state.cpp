#include "checkpoints/train_state.h"

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/h5.h"

namespace dms {

namespace {

const char* kStateFormat = "dms-retrofit train state v2";
const char* kShardFormat = "dms-retrofit optimizer shard v1";

// A float32 dataset of the tensor's values (shape kept; a scalar becomes [1]).
void write_tensor(hid_t parent, const std::string& ds, const at::Tensor& t) {
  at::Tensor c = t.detach().to(at::kFloat).contiguous().cpu();
  std::vector<hsize_t> dims(c.sizes().begin(), c.sizes().end());
  if (dims.empty()) dims.push_back(1);
  h5::write_array(parent, ds, c.data_ptr(), H5T_NATIVE_FLOAT, dims);
}

at::Tensor read_tensor(hid_t parent, const std::string& ds, const std::string& path) {
  require(h5::has_dataset(parent, ds), path, "missing dataset '" + ds + "'");
  auto dims = h5::dataset_dims(parent, ds, path);
  std::vector<int64_t> shape(dims.begin(), dims.end());
  at::Tensor t = at::empty(shape, at::kFloat);
  h5::read_array(parent, ds, t.data_ptr(), H5T_NATIVE_FLOAT, path);
  return t;
}

void check_format(hid_t f, const char* want, const std::string& path) {
  require(h5::has_attr(f, "format") && h5::get_string_attr(f, "format", path) == want, path,
          std::string("not a ") + want + " file");
}

// Closes the HDF5 file, then makes its bytes durable before the caller hashes them.
void finish(h5::Handle& f, const std::string& path) {
  if (H5Fflush(f.get(), H5F_SCOPE_GLOBAL) < 0) throw std::runtime_error(path + ": flush failed");
  f = h5::Handle();
  sync_path(path);
}

}  // namespace

void write_state_file(const std::string& path, const TrainState& s) {
  h5::Handle f = h5::create_file(path);
  h5::set_attr(f.get(), "format", std::string(kStateFormat));
  h5::set_attr(f.get(), "step", s.step);
  h5::set_attr(f.get(), "world_size", s.world_size);
  h5::set_attr(f.get(), "data_epoch", s.data_epoch);
  h5::set_attr(f.get(), "data_offset", s.data_offset);
  h5::set_attr(f.get(), "adam_steps", s.adam_steps);
  h5::set_attr(f.get(), "config_json", s.config_json);
  h5::set_attr(f.get(), "dms_json", s.dms_json);
  h5::set_attr(f.get(), "base_json", s.base_json);
  h5::Handle grp(H5Gcreate2(f.get(), "trained", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
  h5::set_attr(grp.get(), "count", int64_t(s.trained.size()));
  for (size_t i = 0; i < s.trained.size(); ++i) {
    const auto& [name, t] = s.trained[i];
    const std::string ds = std::to_string(i);
    write_tensor(grp.get(), ds, t);
    h5::Handle d(H5Dopen2(grp.get(), ds.c_str(), H5P_DEFAULT), H5Dclose);
    h5::set_attr(d.get(), "name", name);
    h5::set_attr(d.get(), "dtype", std::string(c10::toString(t.scalar_type())));
  }
  grp = h5::Handle();
  finish(f, path);
}

TrainState read_state_file(const std::string& path) {
  h5::Handle f = h5::open_file(path);
  check_format(f.get(), kStateFormat, path);
  TrainState s;
  s.step = h5::get_int_attr(f.get(), "step", path);
  s.world_size = h5::get_int_attr(f.get(), "world_size", path);
  s.data_epoch = h5::get_int_attr(f.get(), "data_epoch", path);
  s.data_offset = h5::get_int_attr(f.get(), "data_offset", path);
  s.adam_steps = h5::get_int_attr(f.get(), "adam_steps", path);
  s.config_json = h5::get_string_attr(f.get(), "config_json", path);
  s.dms_json = h5::get_string_attr(f.get(), "dms_json", path);
  s.base_json = h5::get_string_attr(f.get(), "base_json", path);
  h5::Handle grp = h5::open_group(f.get(), "trained", path);
  const int64_t count = h5::get_int_attr(grp.get(), "count", path);
  require(count >= 0 && count < 1000000, path, "implausible tensor count");
  for (int64_t i = 0; i < count; ++i) {
    const std::string ds = std::to_string(i);
    at::Tensor t = read_tensor(grp.get(), ds, path);
    h5::Handle d = h5::open_dataset(grp.get(), ds, path);
    s.trained.emplace_back(h5::get_string_attr(d.get(), "name", path), t);
  }
  return s;
}

void write_optimizer_shard(const std::string& path, const OptimizerShard& s) {
  h5::Handle f = h5::create_file(path);
  h5::set_attr(f.get(), "format", std::string(kShardFormat));
  h5::set_attr(f.get(), "begin", s.begin);
  h5::set_attr(f.get(), "end", s.end);
  h5::set_attr(f.get(), "numel", s.numel);
  write_tensor(f.get(), "m", s.m);
  write_tensor(f.get(), "v", s.v);
  write_tensor(f.get(), "master", s.master);
  finish(f, path);
}

OptimizerShard read_optimizer_shard(const std::string& path) {
  h5::Handle f = h5::open_file(path);
  check_format(f.get(), kShardFormat, path);
  OptimizerShard s;
  s.begin = h5::get_int_attr(f.get(), "begin", path);
  s.end = h5::get_int_attr(f.get(), "end", path);
  s.numel = h5::get_int_attr(f.get(), "numel", path);
  require(0 <= s.begin && s.begin < s.end && s.end <= s.numel, path,
          "implausible range [" + std::to_string(s.begin) + ", " + std::to_string(s.end) + ") of " +
              std::to_string(s.numel) + " values");
  s.m = read_tensor(f.get(), "m", path);
  s.v = read_tensor(f.get(), "v", path);
  s.master = read_tensor(f.get(), "master", path);
  for (const at::Tensor* t : {&s.m, &s.v, &s.master})
    require(
        t->dim() == 1 && t->numel() == s.end - s.begin, path,
        "a dataset does not hold the " + std::to_string(s.end - s.begin) + " values of its range");
  return s;
}

}  // namespace dms
