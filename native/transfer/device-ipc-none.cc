// device-ipc-none.cc: device-ipc.h in a build without nvcc: nothing is possible, and each call
// says why.
#include "device-ipc.h"

namespace llm {
namespace transfer {

namespace {
Status not_built() {
  return Status(StatusCode::transfer_invalid,
                "this build has no CUDA (nvcc was not found when it was compiled): no CUDA IPC transfer");
}
}  // namespace

bool device_ipc_built() { return false; }

Status export_device_region(const void*, std::string*, std::string*) { return not_built(); }

Status DeviceMapping::open(const std::string&, const std::string&, std::unique_ptr<DeviceMapping>*) {
  return not_built();
}

DeviceMapping::~DeviceMapping() = default;

Status device_copy(const std::vector<DeviceCopy>&, const std::string&) { return not_built(); }

}  // namespace transfer
}  // namespace llm
