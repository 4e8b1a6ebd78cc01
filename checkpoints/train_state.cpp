#include "checkpoints/train_state.h"

#include <openssl/evp.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>

#include "common/h5.h"
#include "common/error.h"

namespace fs = std::filesystem;

namespace dms {

namespace {

const char* kGroups[3] = {"trained", "adam_m", "adam_v"};

// sha256 over (name, dtype, shape, bytes) of every tensor, in order.
std::string checksum(const TrainState& s) {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  for (const NamedTensors* group : {&s.trained, &s.adam_m, &s.adam_v})
    for (const auto& [name, t] : *group) {
      at::Tensor c = t.detach().to(at::kFloat).contiguous().cpu();
      const std::string head = name + "|" + c10::str(c.sizes());
      EVP_DigestUpdate(ctx.get(), head.data(), head.size());
      EVP_DigestUpdate(ctx.get(), c.data_ptr(), size_t(c.numel()) * 4);
    }
  const std::string meta = std::to_string(s.step) + "|" + std::to_string(s.data_epoch) + "|" +
                           std::to_string(s.data_offset) + "|" + std::to_string(s.adam_steps) +
                           "|" + s.config_json +
                           (s.dms_json.empty() && s.base_json.empty()
                                ? std::string()
                                : "|" + s.dms_json + "|" + s.base_json);
  EVP_DigestUpdate(ctx.get(), meta.data(), meta.size());
  unsigned char d[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_DigestFinal_ex(ctx.get(), d, &n);
  char hex[2 * EVP_MAX_MD_SIZE + 1];
  for (unsigned i = 0; i < n; ++i) std::snprintf(hex + 2 * i, 3, "%02x", d[i]);
  return std::string(hex, 2 * n);
}

}  // namespace

void write_train_state(const std::string& path, const TrainState& s) {
  if (fs::path(path).has_parent_path()) fs::create_directories(fs::path(path).parent_path());
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  try {
    {
      h5::Handle f = h5::create_file(tmp);
      h5::set_attr(f.get(), "format", std::string("dms-retrofit train state v1"));
      h5::set_attr(f.get(), "step", s.step);
      h5::set_attr(f.get(), "world_size", s.world_size);
      h5::set_attr(f.get(), "data_epoch", s.data_epoch);
      h5::set_attr(f.get(), "data_offset", s.data_offset);
      h5::set_attr(f.get(), "adam_steps", s.adam_steps);
      h5::set_attr(f.get(), "config_json", s.config_json);
      h5::set_attr(f.get(), "dms_json", s.dms_json);
      h5::set_attr(f.get(), "base_json", s.base_json);
      const NamedTensors* groups[3] = {&s.trained, &s.adam_m, &s.adam_v};
      for (int g = 0; g < 3; ++g) {
        h5::Handle grp(H5Gcreate2(f.get(), kGroups[g], H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                       H5Gclose);
        h5::set_attr(grp.get(), "count", int64_t(groups[g]->size()));
        int64_t i = 0;
        for (const auto& [name, t] : *groups[g]) {
          at::Tensor c = t.detach().to(at::kFloat).contiguous().cpu();
          std::vector<hsize_t> dims(c.sizes().begin(), c.sizes().end());
          if (dims.empty()) dims.push_back(1);
          const std::string ds = std::to_string(i++);
          h5::write_array(grp.get(), ds, c.data_ptr(), H5T_NATIVE_FLOAT, dims);
          h5::Handle d(H5Dopen2(grp.get(), ds.c_str(), H5P_DEFAULT), H5Dclose);
          h5::set_attr(d.get(), "name", name);
          h5::set_attr(d.get(), "dtype", std::string(c10::toString(t.scalar_type())));
        }
      }
      h5::set_attr(f.get(), "sha256", checksum(s));
      if (H5Fflush(f.get(), H5F_SCOPE_GLOBAL) < 0) throw std::runtime_error(tmp + ": flush failed");
    }
    // fsync the data before the rename makes it visible under the final name.
    if (FILE* fp = std::fopen(tmp.c_str(), "rb")) {
      ::fsync(::fileno(fp));
      std::fclose(fp);
    }
    fs::rename(tmp, path);
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
}

TrainState read_train_state(const std::string& path) {
  h5::Handle f = h5::open_file(path);
  TrainState s;
  s.step = h5::get_int_attr(f.get(), "step", path);
  s.world_size = h5::get_int_attr(f.get(), "world_size", path);
  s.data_epoch = h5::get_int_attr(f.get(), "data_epoch", path);
  s.data_offset = h5::get_int_attr(f.get(), "data_offset", path);
  s.adam_steps = h5::get_int_attr(f.get(), "adam_steps", path);
  s.config_json = h5::get_string_attr(f.get(), "config_json", path);
  for (auto [name, field] : {std::pair{"dms_json", &s.dms_json}, {"base_json", &s.base_json}})
    if (h5::has_attr(f.get(), name)) *field = h5::get_string_attr(f.get(), name, path);
  NamedTensors* groups[3] = {&s.trained, &s.adam_m, &s.adam_v};
  for (int g = 0; g < 3; ++g) {
    require(h5::has_dataset(f.get(), kGroups[g]), path, std::string("missing group ") + kGroups[g]);
    h5::Handle grp(H5Gopen2(f.get(), kGroups[g], H5P_DEFAULT), H5Gclose);
    const int64_t count = h5::get_int_attr(grp.get(), "count", path);
    require(count >= 0 && count < 1000000, path, "implausible tensor count");
    for (int64_t i = 0; i < count; ++i) {
      const std::string ds = std::to_string(i);
      auto dims = h5::dataset_dims(grp.get(), ds, path);
      std::vector<int64_t> shape(dims.begin(), dims.end());
      at::Tensor t = at::empty(shape, at::kFloat);
      h5::read_array(grp.get(), ds, t.data_ptr(), H5T_NATIVE_FLOAT, path);
      h5::Handle d(H5Dopen2(grp.get(), ds.c_str(), H5P_DEFAULT), H5Dclose);
      groups[g]->emplace_back(h5::get_string_attr(d.get(), "name", path), t);
    }
  }
  require(checksum(s) == h5::get_string_attr(f.get(), "sha256", path), path,
          "checksum mismatch (damaged checkpoint)");
  return s;
}

std::string checkpoint_path(const std::string& run_dir, int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step-%06lld.h5", static_cast<long long>(step));
  return (fs::path(run_dir) / "checkpoints" / name).string();
}

std::vector<std::string> list_checkpoints(const std::string& run_dir) {
  std::vector<std::string> out;
  const fs::path dir = fs::path(run_dir) / "checkpoints";
  if (!fs::is_directory(dir)) return out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("step-", 0) == 0 && e.path().extension() == ".h5") out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

void prune_checkpoints(const std::string& run_dir, int64_t keep) {
  if (keep <= 0) return;
  auto all = list_checkpoints(run_dir);
  for (size_t i = 0; i + size_t(keep) < all.size(); ++i) fs::remove(all[i]);
}

}  // namespace dms
