// test-harness.h: a minimal test runner for the plain C++ tests (no dependency, so the GPU
// machine and ASan builds need nothing extra). Each test-*.cc is one executable run by ctest.
//
//   TEST(pool_reuses_prefix) { CHECK(x == 1); CHECK_NEAR(a, b, 1e-6); CHECK_OK(status); }
//   int main() { return llm_test::run_all(); }
#pragma once

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

namespace llm_test {

// The exit code of a program that ran nothing for lack of hardware: ctest counts it as skipped
// (SKIP_RETURN_CODE in CMakeLists.txt), never as passed.
constexpr int kSkipExitCode = 77;

// For the line `npm test` ends with (scripts/run-tests.mjs): this program exercised, or skipped,
// `what` ("path amx", "device cuda"), with the reason when skipped. One line appended to
// $KVSERVE_COVERAGE_FILE when it is set: "exercised\t<what>" or "skipped\t<what>\t<why>".
inline void record_coverage(const std::string& what, bool exercised, const std::string& why = std::string()) {
  const char* path = std::getenv("KVSERVE_COVERAGE_FILE");
  if (!path || !*path) return;
  if (FILE* f = std::fopen(path, "a")) {
    std::fprintf(f, "%s\t%s%s%s\n", exercised ? "exercised" : "skipped", what.c_str(), why.empty() ? "" : "\t",
                 why.c_str());
    std::fclose(f);
  }
}

struct Case {
  const char* name;
  std::function<void()> fn;
};

inline std::vector<Case>& registry() {
  static std::vector<Case> cases;
  return cases;
}

inline int& failures() {
  static int n = 0;
  return n;
}

struct Registrar {
  Registrar(const char* name, std::function<void()> fn) { registry().push_back({name, std::move(fn)}); }
};

inline int run_all() {
  int failed_cases = 0;
  for (auto& c : registry()) {
    const int before = failures();
    c.fn();
    const bool ok = failures() == before;
    if (!ok) ++failed_cases;
    std::printf("%s %s\n", ok ? "ok  " : "FAIL", c.name);
  }
  const int passed = static_cast<int>(registry().size()) - failed_cases;
  std::printf("%d passed, %d failed\n", passed, failed_cases);
  return failed_cases == 0 ? 0 : 1;
}

}  // namespace llm_test

#define TEST(name)                                                    \
  static void test_##name();                                          \
  static llm_test::Registrar registrar_##name(#name, test_##name);    \
  static void test_##name()

#define CHECK(cond)                                                                  \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::printf("  %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);         \
      ++llm_test::failures();                                                        \
    }                                                                                \
  } while (0)

// expr: a Status (anything with ok(), code_name() and message()); prints the code and message.
#define CHECK_OK(expr)                                                                                 \
  do {                                                                                                 \
    const auto _st = (expr);                                                                           \
    if (!_st.ok()) {                                                                                   \
      std::printf("  %s:%d: %s: %s %s\n", __FILE__, __LINE__, #expr, _st.code_name(), _st.message().c_str()); \
      ++llm_test::failures();                                                                          \
    }                                                                                                  \
  } while (0)

#define CHECK_EQ(a, b)                                                                       \
  do {                                                                                       \
    auto _va = (a);                                                                          \
    auto _vb = (b);                                                                          \
    if (!(_va == _vb)) {                                                                     \
      std::printf("  %s:%d: CHECK_EQ(%s, %s) failed: %s vs %s\n", __FILE__, __LINE__, #a, #b, \
                  std::to_string(_va).c_str(), std::to_string(_vb).c_str());                 \
      ++llm_test::failures();                                                                \
    }                                                                                        \
  } while (0)

#define CHECK_NEAR(a, b, tol)                                                                 \
  do {                                                                                        \
    double _va = (a), _vb = (b);                                                              \
    if (!(std::fabs(_va - _vb) <= (tol))) {                                                   \
      std::printf("  %s:%d: CHECK_NEAR(%s, %s) failed: %.9g vs %.9g (tol %g)\n", __FILE__,   \
                  __LINE__, #a, #b, _va, _vb, static_cast<double>(tol));                      \
      ++llm_test::failures();                                                                 \
    }                                                                                         \
  } while (0)
