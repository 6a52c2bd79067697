// transfer-binding.h: the N-API face of the KV transfer agent (native/transfer), registered
// into the addon's exports by addon.cc's Init. Its JS surface is TransferAgent in
// ts/native/addon.d.ts.
#pragma once

#include <napi.h>

namespace llm {

// Adds the TransferAgent class to `exports`.
void register_transfer_exports(Napi::Env env, Napi::Object exports);

}  // namespace llm
