#include "common/dir_lock.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "common/error.h"

namespace fs = std::filesystem;

namespace dms {

DirLock::DirLock(const std::string& dir, const std::string& what)
    : dir_(dir), file_((fs::path(dir) / kFileName).string()) {
  std::error_code ec;
  if (fs::exists(fs::symlink_status(dir, ec)))
    require(fs::is_directory(dir, ec), dir, "exists and is not a directory");
  else
    created_dir_ = fs::create_directories(dir, ec);
  require(!ec, dir, "cannot create the directory: " + ec.message());
  // O_NOFOLLOW: a symlink planted under the lock's name must not make us write elsewhere.
  fd_ = ::open(file_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0644);
  require(fd_ >= 0, file_, std::string("cannot create the lock file: ") + std::strerror(errno));
  // A POSIX record lock (not flock): the kernel can name its holder (F_GETLK), so nothing is
  // written into the file and a refused run changes nothing in the directory. This process
  // opens the lock file once, so POSIX locks' per-process release is no pitfall here.
  struct flock lk {};
  lk.l_type = F_WRLCK;
  lk.l_whence = SEEK_SET;
  if (::fcntl(fd_, F_SETLK, &lk) != 0) {
    const int err = errno;
    struct flock holder {};
    holder.l_type = F_WRLCK;
    holder.l_whence = SEEK_SET;
    const bool known = ::fcntl(fd_, F_GETLK, &holder) == 0 && holder.l_type != F_UNLCK;
    ::close(fd_);
    fd_ = -1;
    const std::string who =
        known ? what + " (pid " + std::to_string(holder.l_pid) + ")" : "another process";
    require(err != EACCES && err != EAGAIN, dir, "in use by " + who + " (it holds " + file_ + ")");
    throw InputError(file_ + ": cannot lock: " + std::strerror(err));
  }
}

DirLock::~DirLock() {
  if (fd_ < 0) return;
  std::error_code ec;
  if (created_dir_ && empty_but_lock(dir_)) {
    fs::remove(file_, ec);
    fs::remove(dir_, ec);
  }
  ::close(fd_);  // releases the lock
}

bool empty_but_lock(const std::string& dir) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.path().filename() != DirLock::kFileName) return false;
  return !ec;
}

}  // namespace dms
