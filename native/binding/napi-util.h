// napi-util.h: what every binding file needs: Status -> JS error, and readers for the options
// objects and typed arrays the TS wrappers (ts/native/*.ts) hand over.
//
// Stays true: the TS wrappers validate first; these readers only guard against misuse, and
// every failure is thrown as a JS error whose `code` is the StatusCode name.
#pragma once

#include <napi.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace llm::napi_util {

inline Napi::Error status_error(Napi::Env env, const Status& st) {
  Napi::Error err = Napi::Error::New(env, st.message());
  err.Set("code", Napi::String::New(env, st.code_name()));
  return err;
}

[[noreturn]] inline void throw_status(Napi::Env env, const Status& st) { throw status_error(env, st); }

[[noreturn]] inline void throw_invalid(Napi::Env env, const std::string& msg) {
  throw_status(env, Status(StatusCode::invalid_argument, msg));
}

inline Napi::Value required(const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) throw_invalid(o.Env(), std::string("missing option '") + key + "'");
  return v;
}

inline double get_number(const Napi::Object& o, const char* key) {
  Napi::Value v = required(o, key);
  if (!v.IsNumber()) throw_invalid(o.Env(), std::string("option '") + key + "' must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

inline int64_t get_int(const Napi::Object& o, const char* key) {
  const double d = get_number(o, key);
  if (d != static_cast<double>(static_cast<int64_t>(d)))
    throw_invalid(o.Env(), std::string("option '") + key + "' must be an integer");
  return static_cast<int64_t>(d);
}

inline bool get_bool(const Napi::Object& o, const char* key) {
  Napi::Value v = required(o, key);
  if (!v.IsBoolean()) throw_invalid(o.Env(), std::string("option '") + key + "' must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

inline std::string get_string(const Napi::Object& o, const char* key) {
  Napi::Value v = required(o, key);
  if (!v.IsString()) throw_invalid(o.Env(), std::string("option '") + key + "' must be a string");
  return v.As<Napi::String>().Utf8Value();
}

inline std::vector<int32_t> get_int32_array(Napi::Env env, const Napi::Value& v, const char* what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    throw_invalid(env, std::string(what) + " must be an Int32Array");
  Napi::Int32Array a = v.As<Napi::Int32Array>();
  return std::vector<int32_t>(a.Data(), a.Data() + a.ElementLength());
}

// Positional arguments.
inline std::string arg_string(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsString()) throw_invalid(info.Env(), std::string(what) + " must be a string");
  return info[i].As<Napi::String>().Utf8Value();
}

inline std::vector<int32_t> arg_int32_array(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i) throw_invalid(info.Env(), std::string(what) + " must be an Int32Array");
  return get_int32_array(info.Env(), info[i], what);
}

}  // namespace llm::napi_util
