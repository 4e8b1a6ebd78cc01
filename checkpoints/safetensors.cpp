#include "checkpoints/safetensors.h"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>

#include "common/atomic_file.h"
#include "common/mapped_file.h"
#include "common/error.h"

namespace dms {

at::ScalarType safetensors_dtype(const std::string& name, const std::string& where) {
  static const std::map<std::string, at::ScalarType> kinds = {
      {"F32", at::kFloat}, {"BF16", at::kBFloat16}, {"F16", at::kHalf}, {"F64", at::kDouble},
      {"I64", at::kLong},  {"I32", at::kInt},       {"U8", at::kByte},  {"BOOL", at::kBool}};
  auto it = kinds.find(name);
  require(it != kinds.end(), where, "unsupported dtype '" + name + "'");
  return it->second;
}

std::string safetensors_dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return "F32";
    case at::kBFloat16:
      return "BF16";
    case at::kHalf:
      return "F16";
    case at::kDouble:
      return "F64";
    case at::kLong:
      return "I64";
    case at::kInt:
      return "I32";
    case at::kByte:
      return "U8";
    case at::kBool:
      return "BOOL";
    default:
      throw std::runtime_error("safetensors: cannot store dtype " + std::string(c10::toString(t)));
  }
}

SafetensorsFile open_safetensors(const std::string& path) {
  SafetensorsFile f;
  f.path = path;
  f.map = map_file(path);
  const uint64_t size = f.map->size;
  require(size >= 8, path, "truncated: " + std::to_string(size) + " bytes, no header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | f.map->data[i];
  require(n <= size - 8, path,
          "header length " + std::to_string(n) + " runs past the end of the file (" +
              std::to_string(size) + " bytes)");
  require(n <= kMaxSafetensorsHeader, path,
          "header length " + std::to_string(n) + " over the limit");
  f.data_offset = 8 + n;
  const uint64_t data_size = size - f.data_offset;

  nlohmann::json header;
  try {
    header = nlohmann::json::parse(f.map->data + 8, f.map->data + 8 + n);
  } catch (const nlohmann::json::exception& e) {
    throw InputError(path + ": header is not valid JSON (" + std::string(e.what()) + ")");
  }
  require(header.is_object(), path, "header is not a JSON object");

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    if (name == "__metadata__") {
      require(v.is_object(), path, "__metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        require(m.value().is_string(), path,
                "__metadata__ value '" + m.key() + "' is not a string");
        f.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = path + ": tensor '" + name + "'";
    auto fail = [&](const std::string& what) { throw InputError(where + ": " + what); };
    if (!v.is_object()) fail("entry is not an object");
    if (!v.contains("dtype") || !v["dtype"].is_string()) fail("missing dtype");
    if (!v.contains("shape") || !v["shape"].is_array()) fail("missing shape");
    if (!v.contains("data_offsets") || !v["data_offsets"].is_array() ||
        v["data_offsets"].size() != 2)
      fail("missing data_offsets [begin, end]");
    SafetensorsEntry e;
    e.name = name;
    e.dtype = v["dtype"].get<std::string>();
    const at::ScalarType st = safetensors_dtype(e.dtype, where);
    uint64_t numel = 1;
    for (const auto& s : v["shape"]) {
      if (!s.is_number_unsigned()) fail("shape has a non-integer or negative dimension");
      const uint64_t dim = s.get<uint64_t>();
      if (dim > (uint64_t(1) << 40) || (dim && numel > (uint64_t(1) << 48) / dim))
        fail("shape is implausibly large");
      numel *= dim;
      e.shape.push_back(int64_t(dim));
    }
    for (const auto& o : v["data_offsets"])
      if (!o.is_number_unsigned()) fail("data_offsets are not non-negative integers");
    e.begin = v["data_offsets"][0].get<uint64_t>();
    e.end = v["data_offsets"][1].get<uint64_t>();
    if (e.begin > e.end) fail("data_offsets begin > end");
    if (e.end > data_size)
      fail("data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
           ") out of range (data area is " + std::to_string(data_size) + " bytes)");
    const uint64_t expect = numel * c10::elementSize(st);
    if (expect != e.end - e.begin)
      fail("shape x dtype is " + std::to_string(expect) + " bytes but data_offsets span " +
           std::to_string(e.end - e.begin));
    f.entries.push_back(std::move(e));
  }

  std::vector<const SafetensorsEntry*> by_offset;
  for (const auto& e : f.entries) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(),
            [](auto* a, auto* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i)
    require(by_offset[i]->begin >= by_offset[i - 1]->end, path,
            "tensors '" + by_offset[i - 1]->name + "' and '" + by_offset[i]->name +
                "' overlap in the data area");
  return f;
}

const SafetensorsEntry* SafetensorsFile::find(const std::string& name) const {
  for (const auto& e : entries)
    if (e.name == name) return &e;
  return nullptr;
}

at::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const SafetensorsEntry* e = find(name);
  require(e != nullptr, path, "missing tensor '" + name + "'");
  const at::ScalarType st = safetensors_dtype(e->dtype, path);
  at::Tensor out = at::empty(e->shape, st);
  // Copy (never alias the mapping): the data area may be unaligned and callers may
  // modify the weights in place.
  if (e->end > e->begin)
    std::memcpy(out.data_ptr(), map->data + data_offset + e->begin, e->end - e->begin);
  return out;
}

void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<at::Tensor> blobs;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    at::Tensor c = t.detach().contiguous().cpu();
    const uint64_t bytes = uint64_t(c.numel()) * c.element_size();
    header[name] = {{"dtype", safetensors_dtype_name(c.scalar_type())},
                    {"shape", c.sizes().vec()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    blobs.push_back(c);
  }
  std::string h = header.dump();
  while ((8 + h.size()) % 8 != 0) h.push_back(' ');  // keep the data area 8-byte aligned
  AtomicFile out(path);
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = uint8_t((uint64_t(h.size()) >> (8 * i)) & 0xff);
  out.write(len, 8);
  out.write(h.data(), h.size());
  for (const auto& b : blobs) out.write(b.data_ptr(), uint64_t(b.numel()) * b.element_size());
  out.commit();
}

}  // namespace dms
