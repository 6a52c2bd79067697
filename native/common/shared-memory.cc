// shared-memory.cc: see shared-memory.h.
#include "shared-memory.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

namespace llm {
namespace {

constexpr const char* kPrefix = "/kvserve-";

bool valid_name(const std::string& name) {
  return name.size() > 1 && name.size() <= 200 && name[0] == '/' && name.find('/', 1) == std::string::npos;
}

Status sys_error(const std::string& what, const std::string& name) {
  return Status(StatusCode::io_error, what + " " + name + ": " + std::strerror(errno));
}

Status map_fd(int fd, size_t bytes, void** out) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return Status(StatusCode::out_of_memory, std::string("mmap: ") + std::strerror(errno));
  *out = p;
  return Status::Ok();
}

}  // namespace

Status SharedMemory::create(const std::string& name, size_t bytes, std::unique_ptr<SharedMemory>* out) {
  if (!valid_name(name)) return Status(StatusCode::invalid_argument, "invalid shared-memory name '" + name + "'");
  if (bytes == 0) return Status(StatusCode::invalid_argument, "a shared-memory segment needs at least one byte");
  int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  if (fd < 0) return sys_error("shm_open", name);
  std::unique_ptr<SharedMemory> s(new SharedMemory());
  s->name_ = name;
  s->owner_ = true;  // from here on the destructor unlinks the name
  if (ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
    Status st = sys_error("ftruncate", name);
    close(fd);
    return st;
  }
  Status st = map_fd(fd, bytes, &s->data_);
  close(fd);
  if (!st.ok()) return st;
  s->size_ = bytes;
  *out = std::move(s);
  return Status::Ok();
}

Status SharedMemory::open(const std::string& name, size_t bytes, std::unique_ptr<SharedMemory>* out) {
  if (!valid_name(name)) return Status(StatusCode::invalid_argument, "invalid shared-memory name '" + name + "'");
  int fd = shm_open(name.c_str(), O_RDWR, 0600);
  if (fd < 0) return Status(StatusCode::io_error, "shared-memory segment " + name + ": " + std::strerror(errno));
  struct stat sb;
  if (fstat(fd, &sb) != 0 || static_cast<size_t>(sb.st_size) != bytes) {
    close(fd);
    return Status(StatusCode::invalid_argument, "shared-memory segment " + name + " has " +
                                                    std::to_string(sb.st_size) + " bytes, expected " +
                                                    std::to_string(bytes));
  }
  std::unique_ptr<SharedMemory> s(new SharedMemory());
  Status st = map_fd(fd, bytes, &s->data_);
  close(fd);
  if (!st.ok()) return st;
  s->name_ = name;
  s->size_ = bytes;
  *out = std::move(s);
  return Status::Ok();
}

std::string SharedMemory::unique_name(const std::string& tag) {
  static std::atomic<uint64_t> counter{0};
  return std::string(kPrefix) + std::to_string(getpid()) + "-" + tag + "-" + std::to_string(counter++);
}

int SharedMemory::remove_stale_segments() {
  DIR* dir = opendir("/dev/shm");
  if (!dir) return 0;
  int removed = 0;
  const std::string prefix = kPrefix + 1;  // entries in /dev/shm carry no leading '/'
  while (dirent* e = readdir(dir)) {
    std::string n = e->d_name;
    if (n.compare(0, prefix.size(), prefix) != 0) continue;
    long pid = std::strtol(n.c_str() + prefix.size(), nullptr, 10);
    if (pid <= 0 || pid == getpid()) continue;
    if (kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;  // alive (or not ours to judge)
    if (shm_unlink(("/" + n).c_str()) == 0) ++removed;
  }
  closedir(dir);
  return removed;
}

SharedMemory::~SharedMemory() {
  if (data_) munmap(data_, size_);
  if (owner_) shm_unlink(name_.c_str());
}

}  // namespace llm
