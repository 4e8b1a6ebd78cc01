// Thin RAII over the HDF5 C API, for the few calls we make (token files,
// training checkpoints). Every failure becomes an exception naming the file.
#pragma once
#include <hdf5.h>

#include <string>
#include <vector>

namespace dms::h5 {

// Owns one hid_t and closes it with the matching H5*close.
class Handle {
 public:
  Handle() = default;
  Handle(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  Handle(Handle&& o) noexcept : id_(o.id_), close_(o.close_) { o.id_ = -1; }
  Handle& operator=(Handle&& o) noexcept;
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle();
  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }

 private:
  hid_t id_ = -1;
  herr_t (*close_)(hid_t) = nullptr;
};

// Tells HDF5 not to register its exit-time cleanup; main() calls it before any other HDF5 call.
// That cleanup closes whatever is still open, and on a file whose close already failed (a
// full disk) it dies of SIGSEGV after our error line was printed. Every file we write is
// closed by its Handle on every path, so nothing needs closing at exit.
void skip_exit_cleanup();

// Silences HDF5's own stderr error stack for the life of the process (we report errors
// ourselves, one line each).
void quiet();

// Truncates. userblock: bytes HDF5 leaves to us at the start (0, or a power of 2 >= 512).
Handle create_file(const std::string& path, hsize_t userblock = 0);
Handle open_file(const std::string& path);  // read-only; InputError if not HDF5

// Attributes on a file or dataset: string, integer, double, list of strings.
void set_attr(hid_t obj, const std::string& name, const std::string& value);
void set_attr(hid_t obj, const std::string& name, int64_t value);
void set_attr(hid_t obj, const std::string& name, double value);
bool has_attr(hid_t obj, const std::string& name);
std::string get_string_attr(hid_t obj, const std::string& name, const std::string& file);
int64_t get_int_attr(hid_t obj, const std::string& name, const std::string& file);
double get_double_attr(hid_t obj, const std::string& name, const std::string& file);

// Whole-array datasets of float32 / float64 / int64 / uint8 with their shape.
void write_array(hid_t file, const std::string& name, const void* data, hid_t mem_type,
                 const std::vector<hsize_t>& dims);
bool has_dataset(hid_t file, const std::string& name);
// Opens dataset `name` of `loc` for reading, refusing what would make HDF5 read outside this
// file or more than it holds: an external or soft link, external storage (raw data in any
// other file on the machine), a virtual dataset, and a declared size beyond the bytes stored
// (a few-kilobyte file can declare 2^40 rows of fill values). InputError naming `path`.
Handle open_dataset(hid_t loc, const std::string& name, const std::string& path);
// Opens group `name` of `loc`: it must be a hard link (a group here, not in another file).
Handle open_group(hid_t loc, const std::string& name, const std::string& path);
std::vector<hsize_t> dataset_dims(hid_t file, const std::string& name, const std::string& path);
void read_array(hid_t file, const std::string& name, void* data, hid_t mem_type,
                const std::string& path);

}  // namespace dms::h5
