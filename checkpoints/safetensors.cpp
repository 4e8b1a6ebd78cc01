#include "checkpoints/safetensors.h"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/mapped_file.h"

namespace dms {

namespace {

// The safetensors dtype names, one table for both directions.
const std::vector<std::pair<std::string, at::ScalarType>>& dtype_table() {
  static const std::vector<std::pair<std::string, at::ScalarType>> kinds = {
      {"F32", at::kFloat}, {"BF16", at::kBFloat16}, {"F16", at::kHalf}, {"F64", at::kDouble},
      {"I64", at::kLong},  {"I32", at::kInt},       {"U8", at::kByte},  {"BOOL", at::kBool}};
  return kinds;
}

// The 8-byte little-endian header length, checked against the file size and our limit.
uint64_t header_length(const SafetensorsFile& f) {
  const uint64_t size = f.map->size;
  require(size >= 8, f.path, "truncated: " + std::to_string(size) + " bytes, no header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | f.map->data[i];
  require(n <= size - 8, f.path,
          "header length " + std::to_string(n) + " runs past the end of the file (" +
              std::to_string(size) + " bytes)");
  require(n <= kMaxSafetensorsHeader, f.path,
          "header length " + std::to_string(n) + " over the limit");
  return n;
}

nlohmann::json parse_header(const SafetensorsFile& f, uint64_t n) {
  nlohmann::json header;
  // JSON lets a key repeat and nlohmann keeps the last: two tensors under one name would
  // load whichever came last, silently. Top-level keys (depth 1) are the tensor names.
  std::set<std::string> names;
  auto unique_names = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& key) {
    if (event == nlohmann::json::parse_event_t::key && depth == 1)
      require(names.insert(key.get<std::string>()).second, f.path,
              "tensor '" + key.get<std::string>() + "' appears twice in the header");
    return true;
  };
  try {
    header = nlohmann::json::parse(f.map->data + 8, f.map->data + 8 + n, unique_names);
  } catch (const nlohmann::json::exception& e) {
    throw InputError(f.path + ": header is not valid JSON (" + std::string(e.what()) + ")");
  }
  require(header.is_object(), f.path, "header is not a JSON object");
  return header;
}

void read_metadata(const nlohmann::json& v, SafetensorsFile& f) {
  require(v.is_object(), f.path, "__metadata__ is not an object");
  for (auto m = v.begin(); m != v.end(); ++m) {
    require(m.value().is_string(), f.path, "__metadata__ value '" + m.key() + "' is not a string");
    f.metadata[m.key()] = m.value().get<std::string>();
  }
}

// One tensor's header entry, checked against the data area of data_size bytes.
SafetensorsEntry parse_entry(const std::string& path, const std::string& name,
                             const nlohmann::json& v, uint64_t data_size) {
  const std::string where = path + ": tensor '" + name + "'";
  auto fail = [&](const std::string& what) { throw InputError(where + ": " + what); };
  if (!v.is_object()) fail("entry is not an object");
  if (!v.contains("dtype") || !v["dtype"].is_string()) fail("missing dtype");
  if (!v.contains("shape") || !v["shape"].is_array()) fail("missing shape");
  if (!v.contains("data_offsets") || !v["data_offsets"].is_array() || v["data_offsets"].size() != 2)
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
  return e;
}

void require_no_overlap(const SafetensorsFile& f) {
  std::vector<const SafetensorsEntry*> by_offset;
  for (const auto& e : f.entries) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(),
            [](auto* a, auto* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i)
    require(by_offset[i]->begin >= by_offset[i - 1]->end, f.path,
            "tensors '" + by_offset[i - 1]->name + "' and '" + by_offset[i]->name +
                "' overlap in the data area");
}

}  // namespace

at::ScalarType safetensors_dtype(const std::string& name, const std::string& where) {
  for (const auto& [n, t] : dtype_table())
    if (n == name) return t;
  throw InputError(where + ": unsupported dtype '" + name + "'");
}

std::string safetensors_dtype_name(at::ScalarType t) {
  for (const auto& [n, k] : dtype_table())
    if (k == t) return n;
  throw std::runtime_error("safetensors: cannot store dtype " + std::string(c10::toString(t)));
}

SafetensorsFile open_safetensors(const std::string& path) {
  SafetensorsFile f;
  f.path = path;
  f.map = map_file(path);
  const uint64_t n = header_length(f);
  f.data_offset = 8 + n;
  const uint64_t data_size = f.map->size - f.data_offset;
  const nlohmann::json header = parse_header(f, n);
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__")
      read_metadata(it.value(), f);
    else
      f.entries.push_back(parse_entry(path, it.key(), it.value(), data_size));
  }
  require_no_overlap(f);
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
