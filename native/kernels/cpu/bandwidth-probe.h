// bandwidth-probe.h: this machine's memory read bandwidth, STREAM-like (the bench's roofline).
//
// Owns: one measurement: a fresh buffer of `bytes` (written once so every page is resident),
// then `threads` workers each sum their contiguous share, best of a few passes.
// Settings: bytes >= 64 MiB (smaller buffers measure caches), default 1 GiB; threads as in
// ThreadPool (0 = every CPU this process may run on).
#pragma once

#include <cstdint>

#include "../../common/status.h"

namespace llm::cpu {

// GB/s (1e9 bytes per second) read by the best of the passes.
Status read_bandwidth_gbs(int64_t bytes, int threads, double* gbs);

}  // namespace llm::cpu
