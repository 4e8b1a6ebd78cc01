#include "checkpoints/load_model.h"

#include <filesystem>
#include <set>

#include "checkpoints/hf_config.h"
#include "checkpoints/llama2c.h"
#include "checkpoints/safetensors.h"
#include "common/error.h"
#include "common/host.h"
#include "common/json_file.h"

namespace fs = std::filesystem;

namespace dms {

namespace {

// The safetensors files of an HF directory, and which file holds each tensor.
struct WeightFiles {
  std::vector<SafetensorsFile> files;
  std::map<std::string, size_t> where;  // tensor name -> index into files
};

WeightFiles open_weights(const fs::path& dir) {
  WeightFiles w;
  const fs::path index = dir / "model.safetensors.index.json";
  const fs::path single = dir / "model.safetensors";
  if (fs::exists(index)) {
    nlohmann::json j = read_json_file(index.string());
    require(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(),
            index.string(), "no 'weight_map' object");
    std::map<std::string, size_t> file_ids;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      require(it.value().is_string(), index.string(),
              "weight_map entry '" + it.key() + "' is not a file name");
      const std::string shard = it.value().get<std::string>();
      require(shard.find('/') == std::string::npos && shard != ".." && !shard.empty(),
              index.string(), "shard name '" + shard + "' is not a plain file name");
      if (!file_ids.count(shard)) {
        const fs::path sp = dir / shard;
        require(fs::is_regular_file(sp), index.string(),
                "names shard '" + shard + "' which does not exist");
        file_ids[shard] = w.files.size();
        w.files.push_back(open_safetensors(sp.string()));
      }
      const SafetensorsFile& f = w.files[file_ids[shard]];
      require(f.find(it.key()) != nullptr, f.path,
              "missing tensor '" + it.key() + "' (listed in " + index.string() + ")");
      w.where[it.key()] = file_ids[shard];
    }
  } else {
    require(fs::exists(single), dir.string(),
            "no model.safetensors or model.safetensors.index.json");
    w.files.push_back(open_safetensors(single.string()));
    for (const auto& e : w.files[0].entries) w.where[e.name] = 0;
  }
  return w;
}

// Every weight the config implies is present, of its shape and a floating dtype, and the
// model fits in memory: checked on a shape-only (meta) model before anything is allocated,
// since an untrusted config.json can imply gigabytes a tiny file does not hold.
void check_weights_before_allocation(const WeightFiles& files, const ModelConfig& c,
                                     const DmsConfig& dms_cfg, at::ScalarType dtype,
                                     const std::string& path) {
  Model shapes = make_model(c, at::TensorOptions().dtype(dtype).device(at::kMeta));
  if (dms_cfg.enabled) attach_dms(shapes, dms_cfg);
  uint64_t bytes = 0;
  for (auto& [name, t] : named_weights(shapes)) {
    auto it = files.where.find(name);
    const std::string& first = files.files.empty() ? path : files.files[0].path;
    require(it != files.where.end(), files.files.size() == 1 ? first : path,
            "missing tensor '" + name + "'");
    const SafetensorsFile& f = files.files[it->second];
    const SafetensorsEntry& e = *f.find(name);
    require(at::isFloatingType(safetensors_dtype(e.dtype, f.path)), f.path,
            "tensor '" + name + "' is stored as " + e.dtype + "; weights must be floating point");
    require(at::IntArrayRef(e.shape) == t->sizes(), f.path,
            "tensor '" + name + "' has shape " + c10::str(at::IntArrayRef(e.shape)) +
                ", config implies " + c10::str(t->sizes()));
    bytes += uint64_t(t->numel()) * t->element_size();
  }
  require_fits_in_memory(bytes, path);
}

}  // namespace

ModelSource detect_model_source(const std::string& path) {
  require(fs::exists(path), path, "no such file or directory");
  if (fs::is_directory(path)) {
    require(fs::exists(fs::path(path) / "config.json"), path, "directory has no config.json");
    return ModelSource::hf_directory;
  }
  if (fs::path(path).extension() == ".json") return ModelSource::hf_config_only;
  if (fs::path(path).extension() == ".bin") return ModelSource::llama2c;
  throw InputError(path + ": not a model (expected an HF directory, config.json or llama2.c .bin)");
}

ModelConfig read_model_config(const std::string& path) {
  switch (detect_model_source(path)) {
    case ModelSource::hf_directory:
      return read_hf_config((fs::path(path) / "config.json").string());
    case ModelSource::hf_config_only:
      return read_hf_config(path);
    case ModelSource::llama2c:
      return read_llama2c_config(path);
  }
  return {};
}

Model load_model(const std::string& path, const LoadOptions& opts) {
  const ModelSource src = detect_model_source(path);
  require(src != ModelSource::hf_config_only, path,
          "a config.json alone has no weights (give the model directory)");
  Model m;
  if (src == ModelSource::llama2c) {
    m = load_llama2c(path);
  } else {
    const std::string cfg_path = (fs::path(path) / "config.json").string();
    const nlohmann::json cfg = read_json_file(cfg_path);
    ModelConfig c = parse_hf_config(cfg, cfg_path);
    const DmsConfig dms_cfg = parse_dms_config(cfg, cfg_path);
    WeightFiles files = open_weights(path);
    at::ScalarType dtype = opts.dtype;
    if (opts.keep_dtype && !files.files.empty() && !files.files[0].entries.empty())
      dtype = safetensors_dtype(files.files[0].entries[0].dtype, files.files[0].path);
    check_weights_before_allocation(files, c, dms_cfg, dtype, path);
    m = make_model(c, dtype);
    if (dms_cfg.enabled) attach_dms(m, dms_cfg);  // adapters are loaded with the other weights
    for (auto& [name, t] : named_weights(m))
      *t = files.files[files.where.at(name)].tensor(name).to(dtype);
    if (c.tied_embeddings) m.lm_head = m.embed;
  }
  if (!opts.keep_dtype && opts.dtype != at::kFloat)
    for (auto& [name, t] : named_weights(m)) *t = t->to(opts.dtype);
  if (m.config.tied_embeddings) m.lm_head = m.embed;
  return m;
}

std::map<std::string, int64_t> stored_dtypes(const std::string& path) {
  std::map<std::string, int64_t> out;
  switch (detect_model_source(path)) {
    case ModelSource::llama2c: {
      ModelConfig c = read_llama2c_config(path);
      out["F32"] = int64_t(2 + 9 * c.n_layers + (c.tied_embeddings ? 0 : 1));
      break;
    }
    case ModelSource::hf_directory: {
      WeightFiles w = open_weights(path);
      for (const auto& f : w.files)
        for (const auto& e : f.entries) out[e.dtype]++;
      break;
    }
    case ModelSource::hf_config_only:
      break;
  }
  return out;
}

std::string find_tokenizer(const std::string& model_path, int64_t vocab_size) {
  fs::path p(model_path);
  fs::path dir = fs::is_directory(p) ? p : p.parent_path();
  for (const fs::path& c :
       {dir / "tokenizer.json", dir / ("tok" + std::to_string(vocab_size) + ".model"),
        dir / "tokenizer.model"})
    if (fs::is_regular_file(c)) return c.string();
  if (fs::is_regular_file(dir / "vocab.json") && fs::is_regular_file(dir / "merges.txt"))
    return (dir / "vocab.json").string();
  return "";
}

}  // namespace dms
