// status.h: the error vocabulary that crosses module boundaries (engine -> binding -> JS).
//
// Owns: StatusCode, its stable string names (the JS `code` of a native error), Status.
// Stays true: library code never aborts or exits on bad input; it returns a Status.
// Asserts are for our own invariants only.
#pragma once

#include <string>
#include <utility>

namespace llm {

// Names are the `code` a JS caller sees; keep them stable.
#define LLM_STATUS_CODES(X)                                                              \
  X(ok, "OK")                                                                            \
  X(invalid_argument, "ERR_INVALID_ARGUMENT")                                            \
  X(model_file_missing, "ERR_MODEL_FILE_MISSING")          /* a file the model needs */  \
  X(model_config_invalid, "ERR_MODEL_CONFIG_INVALID")      /* config.json unreadable */  \
  X(model_arch_unsupported, "ERR_MODEL_ARCH_UNSUPPORTED")                                \
  X(model_file_truncated, "ERR_MODEL_FILE_TRUNCATED")      /* shorter than its header */ \
  X(model_header_invalid, "ERR_MODEL_HEADER_INVALID")      /* safetensors header */      \
  X(model_tensor_missing, "ERR_MODEL_TENSOR_MISSING")                                    \
  X(model_tensor_shape, "ERR_MODEL_TENSOR_SHAPE")          /* disagrees with config */   \
  X(model_tensor_dtype, "ERR_MODEL_TENSOR_DTYPE")                                        \
  X(io_error, "ERR_IO")                                                                  \
  X(out_of_memory, "ERR_OUT_OF_MEMORY")                                                  \
  X(request_invalid, "ERR_REQUEST_INVALID")                                              \
  X(request_too_long, "ERR_REQUEST_TOO_LONG")              /* can never fit */           \
  X(request_duplicate, "ERR_REQUEST_DUPLICATE")                                          \
  X(engine_closed, "ERR_ENGINE_CLOSED")                                                  \
  X(device_unavailable, "ERR_DEVICE_UNAVAILABLE")                                        \
  X(transfer_invalid, "ERR_TRANSFER_INVALID")              /* block ids, layout */       \
  X(transfer_peer, "ERR_TRANSFER_PEER")                    /* unknown, stale, gone */    \
  X(transfer_closed, "ERR_TRANSFER_CLOSED")                                              \
  X(internal, "ERR_INTERNAL")

enum class StatusCode : int {
#define LLM_STATUS_ENUM(name, str) name,
  LLM_STATUS_CODES(LLM_STATUS_ENUM)
#undef LLM_STATUS_ENUM
};

inline const char* status_code_name(StatusCode c) {
  switch (c) {
#define LLM_STATUS_NAME(name, str) \
  case StatusCode::name:           \
    return str;
    LLM_STATUS_CODES(LLM_STATUS_NAME)
#undef LLM_STATUS_NAME
  }
  return "ERR_INTERNAL";
}

class Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status Ok() { return Status(); }

  bool ok() const { return code_ == StatusCode::ok; }
  StatusCode code() const { return code_; }
  const char* code_name() const { return status_code_name(code_); }
  const std::string& message() const { return message_; }

 private:
  StatusCode code_ = StatusCode::ok;
  std::string message_;
};

#define LLM_RETURN_IF_ERROR(expr)    \
  do {                               \
    ::llm::Status _st = (expr);      \
    if (!_st.ok()) return _st;       \
  } while (0)

}  // namespace llm
