// ipc-handle.h: naming a device allocation to another process on the same host (CUDA IPC), and
// opening one so named, as plain C++. The engine exports a tensor-parallel rank's KV pool this
// way; the transfer agent exports and opens pools with it (native/transfer/device-ipc.h); the
// ranks' one-shot all-reduce maps its peers' buffers with it (all-reduce.h).
// Stays true: devices are named by UUID ("GPU-xxxxxxxx-..."), since a device's index can differ
// between two processes (CUDA_VISIBLE_DEVICES) and its UUID cannot; a handle is 128 lowercase
// hex digits and names a whole cudaMalloc allocation (its first byte).
#pragma once

#include <string>

#include "cuda-common.h"

namespace llm::cuda {

// The IPC handle of the allocation that starts at `base` and the UUID of its device, making that
// device current. ERR_TRANSFER_INVALID when `base` is not the start of device memory this process
// allocated.
Status export_ipc_handle(const void* base, std::string* handle_hex, std::string* device_uuid);

// The UUID of device `device` of this process ("" when it cannot be read).
std::string device_uuid(int device);

// Maps the allocation `handle_hex` names into device `device`'s context (peer access enabled as
// needed) and makes `device` current. ERR_TRANSFER_INVALID for a malformed handle,
// ERR_TRANSFER_PEER when it does not open (a stale handle, or one this same process exported).
Status open_ipc_handle(const std::string& handle_hex, int device, void** out);
// Unmaps what open_ipc_handle mapped on `device`.
void close_ipc_handle(void* p, int device);

// The text form of handles passed between processes (an IPC handle, NCCL's communicator id):
// 2 * n lowercase hex digits. from_hex is false for anything else.
std::string to_hex(const void* bytes, size_t n);
bool from_hex(const std::string& hex, void* bytes, size_t n);

}  // namespace llm::cuda
