// shared-library.h: opening a library the build has no header for (cuBLAS, NCCL) at run time,
// as plain C++ over dlopen/dlsym.
//
// Owns: the search (the first candidate dlopen takes), the error that lists every candidate
// tried, and resolving entry points while collecting the names that are missing, so one message
// names them all.
// Stays true: a library is opened RTLD_NOW | RTLD_LOCAL and never closed (its entry points are
// kept for the process's life).
#pragma once

#include <dlfcn.h>

#include <cstdlib>
#include <string>
#include <vector>

namespace llm::cuda {

class SharedLibrary {
 public:
  // Opens the file named by $env_var when set, else the first of `names` the loader takes.
  // False with *why "<what> not found (set <env_var> or LD_LIBRARY_PATH); tried: ..." otherwise.
  bool open(const char* what, const char* env_var, const std::vector<const char*>& names, std::string* why) {
    std::vector<std::string> candidates;
    if (const char* env = std::getenv(env_var)) candidates.push_back(env);
    candidates.insert(candidates.end(), names.begin(), names.end());
    std::string tried;
    for (const std::string& c : candidates) {
      if ((handle_ = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL))) {
        path_ = c;
        return true;
      }
      const char* e = dlerror();
      tried += "\n  " + c + ": " + (e ? e : "not found");
    }
    *why = std::string(what) + " not found (set " + env_var + " or LD_LIBRARY_PATH); tried:" + tried;
    return false;
  }

  // *fn = the entry point `name` (null, and its name remembered, when the library lacks it).
  template <typename Fn>
  void resolve(const char* name, Fn* fn) {
    void* p = dlsym(handle_, name);
    if (!p) missing_ += std::string(missing_.empty() ? "" : ", ") + name;
    *fn = reinterpret_cast<Fn>(p);
  }

  // True when every resolve found its entry point; else *why "<path> lacks <names>".
  bool complete(std::string* why) const {
    if (missing_.empty()) return true;
    *why = path_ + " lacks " + missing_;
    return false;
  }

  const std::string& path() const { return path_; }

 private:
  void* handle_ = nullptr;
  std::string path_;
  std::string missing_;
};

}  // namespace llm::cuda
