#include "common/h5.h"

#include "common/mapped_file.h"

#include <stdexcept>

#include "common/error.h"

namespace dms::h5 {

Handle& Handle::operator=(Handle&& o) noexcept {
  if (this != &o) {
    if (id_ >= 0 && close_) close_(id_);
    id_ = o.id_;
    close_ = o.close_;
    o.id_ = -1;
  }
  return *this;
}

Handle::~Handle() {
  if (id_ >= 0 && close_) close_(id_);
}

void skip_exit_cleanup() {
  H5dont_atexit();
}

void quiet() {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
}

static void check(herr_t r, const std::string& what) {
  if (r < 0) throw std::runtime_error("HDF5: " + what);
}

Handle create_file(const std::string& path, hsize_t userblock) {
  quiet();
  Handle fcpl(H5Pcreate(H5P_FILE_CREATE), H5Pclose);
  if (!fcpl.valid()) throw std::runtime_error(path + ": HDF5 file creation properties");
  if (userblock > 0) check(H5Pset_userblock(fcpl.get(), userblock), "user block");
  hid_t f = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, fcpl.get(), H5P_DEFAULT);
  if (f < 0) throw std::runtime_error(path + ": cannot create HDF5 file");
  return Handle(f, H5Fclose);
}

Handle open_file(const std::string& path) {
  require_regular_file(path);  // HDF5 would open a FIFO and wait
  quiet();
  require(H5Fis_hdf5(path.c_str()) > 0, path, "not an HDF5 file");
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  require(f >= 0, path, "cannot open HDF5 file (damaged?)");
  return Handle(f, H5Fclose);
}

void set_attr(hid_t obj, const std::string& name, const std::string& value) {
  Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  check(H5Tset_size(type.get(), std::max<size_t>(1, value.size())), "string type");
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  if (H5Aexists(obj, name.c_str()) > 0) H5Adelete(obj, name.c_str());
  Handle a(H5Acreate2(obj, name.c_str(), type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT),
           H5Aclose);
  check(a.get(), "create attribute " + name);
  std::string padded = value.empty() ? std::string(1, '\0') : value;
  check(H5Awrite(a.get(), type.get(), padded.data()), "write attribute " + name);
}

template <typename T>
static void set_scalar(hid_t obj, const std::string& name, hid_t type, T v) {
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  if (H5Aexists(obj, name.c_str()) > 0) H5Adelete(obj, name.c_str());
  Handle a(H5Acreate2(obj, name.c_str(), type, space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  check(a.get(), "create attribute " + name);
  check(H5Awrite(a.get(), type, &v), "write attribute " + name);
}

void set_attr(hid_t obj, const std::string& name, int64_t value) {
  set_scalar(obj, name, H5T_NATIVE_INT64, value);
}
void set_attr(hid_t obj, const std::string& name, double value) {
  set_scalar(obj, name, H5T_NATIVE_DOUBLE, value);
}

bool has_attr(hid_t obj, const std::string& name) {
  return H5Aexists(obj, name.c_str()) > 0;
}

static Handle open_attr(hid_t obj, const std::string& name, const std::string& file) {
  require(has_attr(obj, name), file, "missing attribute '" + name + "'");
  Handle a(H5Aopen(obj, name.c_str(), H5P_DEFAULT), H5Aclose);
  require(a.valid(), file, "cannot open attribute '" + name + "'");
  return a;
}

std::string get_string_attr(hid_t obj, const std::string& name, const std::string& file) {
  Handle a = open_attr(obj, name, file);
  Handle type(H5Aget_type(a.get()), H5Tclose);
  require(H5Tget_class(type.get()) == H5T_STRING && !H5Tis_variable_str(type.get()), file,
          "attribute '" + name + "' is not a fixed-length string");
  const size_t n = H5Tget_size(type.get());
  require(n < (size_t(1) << 28), file, "attribute '" + name + "' is too large");
  std::string s(n, '\0');
  check(H5Aread(a.get(), type.get(), s.data()), "read attribute " + name);
  while (!s.empty() && s.back() == '\0') s.pop_back();
  return s;
}

// A scalar attribute read as mem_type; `kind` names it in the error ("an integer").
template <typename T>
static T get_scalar_attr(hid_t obj, const std::string& name, const std::string& file,
                         hid_t mem_type, const char* kind) {
  Handle a = open_attr(obj, name, file);
  T v = 0;
  require(H5Aread(a.get(), mem_type, &v) >= 0, file, "attribute '" + name + "' is not " + kind);
  return v;
}

int64_t get_int_attr(hid_t obj, const std::string& name, const std::string& file) {
  return get_scalar_attr<int64_t>(obj, name, file, H5T_NATIVE_INT64, "an integer");
}

double get_double_attr(hid_t obj, const std::string& name, const std::string& file) {
  return get_scalar_attr<double>(obj, name, file, H5T_NATIVE_DOUBLE, "a number");
}

void write_array(hid_t file, const std::string& name, const void* data, hid_t mem_type,
                 const std::vector<hsize_t>& dims) {
  Handle space(H5Screate_simple(int(dims.size()), dims.data(), nullptr), H5Sclose);
  Handle d(
      H5Dcreate2(file, name.c_str(), mem_type, space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
      H5Dclose);
  check(d.get(), "create dataset " + name);
  check(H5Dwrite(d.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), "write dataset " + name);
}

bool has_dataset(hid_t file, const std::string& name) {
  return H5Lexists(file, name.c_str(), H5P_DEFAULT) > 0;
}

// The declared extent's bytes (0 for a bad rank), saturating rather than overflowing.
static double declared_bytes(hid_t d) {
  Handle space(H5Dget_space(d), H5Sclose);
  const int rank = H5Sget_simple_extent_ndims(space.get());
  if (rank < 0 || rank > 8) return 0;
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  Handle type(H5Dget_type(d), H5Tclose);
  double bytes = double(H5Tget_size(type.get()));
  for (hsize_t n : dims) bytes *= double(n);
  return bytes;
}

// `name` exists in `loc` as a hard link: external links would open any file on the machine.
static void require_hard_link(hid_t loc, const std::string& name, const std::string& what,
                              const std::string& path) {
  require(has_dataset(loc, name), path, "missing " + what);
  H5L_info_t link{};
  require(H5Lget_info(loc, name.c_str(), &link, H5P_DEFAULT) >= 0, path, "cannot read " + what);
  require(link.type == H5L_TYPE_HARD, path,
          what + " is a link to elsewhere (external or soft links are not read)");
}

Handle open_group(hid_t loc, const std::string& name, const std::string& path) {
  const std::string what = "group '" + name + "'";
  require_hard_link(loc, name, what, path);
  Handle g(H5Gopen2(loc, name.c_str(), H5P_DEFAULT), H5Gclose);
  require(g.valid(), path, "cannot open " + what + " (damaged?)");
  return g;
}

Handle open_dataset(hid_t loc, const std::string& name, const std::string& path) {
  const std::string what = "dataset '" + name + "'";
  require_hard_link(loc, name, what, path);
  Handle d(H5Dopen2(loc, name.c_str(), H5P_DEFAULT), H5Dclose);
  require(d.valid(), path, "cannot open " + what + " (damaged?)");
  Handle plist(H5Dget_create_plist(d.get()), H5Pclose);
  require(plist.valid(), path, "cannot read " + what + "'s layout (damaged?)");
  require(H5Pget_layout(plist.get()) != H5D_VIRTUAL, path,
          what + " is a virtual dataset (data in other files is not read)");
  require(H5Pget_external_count(plist.get()) == 0, path,
          what + " keeps its data in external files (not read)");
  // Unfiltered data is stored at its full size; filtered (compressed) data gets 1000x.
  const int filters = H5Pget_nfilters(plist.get());
  const double stored = double(H5Dget_storage_size(d.get()));
  const double declared = declared_bytes(d.get());
  require(declared <= (filters > 0 ? 1000 : 1) * stored + 4096, path,
          what + " declares " + std::to_string(int64_t(declared)) + " bytes but stores " +
              std::to_string(int64_t(stored)) + " (a damaged or crafted file)");
  return d;
}

std::vector<hsize_t> dataset_dims(hid_t file, const std::string& name, const std::string& path) {
  Handle d = open_dataset(file, name, path);
  Handle space(H5Dget_space(d.get()), H5Sclose);
  const int rank = H5Sget_simple_extent_ndims(space.get());
  require(rank >= 0 && rank <= 8, path, "dataset '" + name + "' has a bad rank");
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  return dims;
}

void read_array(hid_t file, const std::string& name, void* data, hid_t mem_type,
                const std::string& path) {
  Handle d = open_dataset(file, name, path);
  require(H5Dread(d.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0, path,
          "cannot read dataset '" + name + "' (damaged?)");
}

}  // namespace dms::h5
