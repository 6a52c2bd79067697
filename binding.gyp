# binding.gyp: the CPU-only fallback build for machines without CMake (node-gyp).
# The full build, with CUDA when nvcc is found, is CMakeLists.txt (used by npm install).
# Keep the source lists in step with CMakeLists.txt's globs. The ISA kernel files (cpu-avx2.cc,
# cpu-avx512.cc, cpu-amx.cc) need per-file -m flags, so this build leaves them out and runs the
# reference kernels (cpu-dispatch.cc without LLM_CPU_X86_PATHS); and no CUDA: the engine gets
# model-runner-cuda-none.cc, never model-runner-cuda.cc, and the transfer agent device-ipc-none.cc.
{
  "targets": [
    {
      "target_name": "kvserve",
      "sources": [
        "<!@(node -p \"require('fs').readdirSync('native/common').filter(f => f.endsWith('.cc')).map(f => 'native/common/' + f).join(' ')\")",
        "<!@(node -p \"require('fs').readdirSync('native/engine').filter(f => f.endsWith('.cc') && f !== 'model-runner-cuda.cc').map(f => 'native/engine/' + f).join(' ')\")",
        "<!@(node -p \"require('fs').readdirSync('native/kernels/cpu').filter(f => f.endsWith('.cc') && !['cpu-avx2.cc', 'cpu-avx512.cc', 'cpu-amx.cc'].includes(f)).map(f => 'native/kernels/cpu/' + f).join(' ')\")",
        "<!@(node -p \"require('fs').readdirSync('native/transfer').filter(f => f.endsWith('.cc') && f !== 'device-ipc-cuda.cc').map(f => 'native/transfer/' + f).join(' ')\")",
        "<!@(node -p \"require('fs').readdirSync('native/binding').filter(f => f.endsWith('.cc')).map(f => 'native/binding/' + f).join(' ')\")"
      ],
      "include_dirs": [
        "native",
        "<!(node -p \"require('node-addon-api').include_dir\")"
      ],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED", "NAPI_CPP_EXCEPTIONS"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++1y", "-std=gnu++14"],
      "cflags_cc": ["-std=c++17", "-O3", "-fexceptions"],
      "xcode_settings": {
        "GCC_ENABLE_CPP_EXCEPTIONS": "YES",
        "CLANG_CXX_LANGUAGE_STANDARD": "c++17",
        "OTHER_CPLUSPLUSFLAGS": ["-O3"]
      },
      "libraries": ["-lpthread"]
    }
  ]
}
