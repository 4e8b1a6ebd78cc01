// An exclusive lock on a directory we write into (a run's --out): the file "<dir>/.dms.lock"
// locked (fcntl) for the life of the object; the file stays empty. The kernel drops the lock when
// the process ends, however it ends (SIGKILL included), so a crashed run never leaves a stale lock.
#pragma once
#include <string>

namespace dms {

class DirLock {
 public:
  static constexpr const char* kFileName = ".dms.lock";

  // Creates `dir` when missing (and its parents), then takes the lock without waiting:
  // InputError "<dir>: in use by <what> (pid N)" when another process holds it, or naming
  // the problem when the directory or the lock file cannot be made. `what` names the kind
  // of holder in that message, e.g. "dms retrofit".
  DirLock(const std::string& dir, const std::string& what);
  // Releases the lock; removes the lock file and the directory again when this object
  // created the directory and nothing else was written into it (a run refused at startup
  // leaves nothing behind).
  ~DirLock();
  DirLock(const DirLock&) = delete;
  DirLock& operator=(const DirLock&) = delete;

 private:
  std::string dir_, file_;
  int fd_ = -1;
  bool created_dir_ = false;
};

// Whether `dir` holds nothing but (possibly) the lock file.
bool empty_but_lock(const std::string& dir);

}  // namespace dms
