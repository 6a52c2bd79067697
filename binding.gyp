# binding.gyp: the CPU-only fallback build for machines without CMake (node-gyp).
# The full build, with CUDA when nvcc is found, is CMakeLists.txt (used by npm install).
# Both take their source lists and the ISA kernel files' flags from native/sources.json, here
# through scripts/native-sources.mjs: the libraries with their no-CUDA variants
# (model-runner-cuda-none.cc, device-ipc-none.cc), and on x86-64 (not Windows) one static
# library per ISA group, compiled with that group's -m flags only (the dispatch calls them only
# on a CPU that has the instructions; elsewhere the reference kernels run). A group added to
# sources.json needs its kvserve_isa_<group> target here: configuring fails until it has one.
{
  "target_defaults": {
    "include_dirs": [
      "native",
      "<!(node -p \"require('node-addon-api').include_dir\")"
    ],
    "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED", "NAPI_CPP_EXCEPTIONS"],
    "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++1y", "-std=gnu++14", "-std=gnu++17"],
    "cflags_cc": ["-std=c++17", "-fexceptions", "-fPIC"],
    "xcode_settings": {
      "GCC_ENABLE_CPP_EXCEPTIONS": "YES",
      "CLANG_CXX_LANGUAGE_STANDARD": "c++17"
    },
    "configurations": {
      "Release": {
        "cflags_cc": ["-O3"],
        "xcode_settings": {"GCC_OPTIMIZATION_LEVEL": "3"}
      }
    }
  },
  "targets": [
    {
      "target_name": "kvserve",
      "sources": [
        "<!@(node scripts/native-sources.mjs sources llm_common llm_model llm_kernels_cpu llm_kv llm_engine llm_transfer llm_addon)"
      ],
      "libraries": ["-lpthread"],
      "conditions": [
        ["target_arch=='x64' and OS!='win'", {
          "defines": ["LLM_CPU_X86_PATHS=1"],
          "dependencies": ["kvserve_isa_avx2", "kvserve_isa_avx512", "kvserve_isa_avx512_bf16", "kvserve_isa_amx"]
        }]
      ]
    }
  ],
  "conditions": [
    ["target_arch=='x64' and OS!='win'", {
      "targets": [
        {
          "target_name": "kvserve_isa_avx2",
          "type": "static_library",
          "sources": ["<!@(node scripts/native-sources.mjs isa-groups avx2 avx512 avx512_bf16 amx)",
                      "<!@(node scripts/native-sources.mjs isa avx2)"],
          "cflags": ["<!@(node scripts/native-sources.mjs isa-flags avx2)"],
          "xcode_settings": {"OTHER_CPLUSPLUSFLAGS": ["<!@(node scripts/native-sources.mjs isa-flags avx2)"]}
        },
        {
          "target_name": "kvserve_isa_avx512",
          "type": "static_library",
          "sources": ["<!@(node scripts/native-sources.mjs isa avx512)"],
          "cflags": ["<!@(node scripts/native-sources.mjs isa-flags avx512)"],
          "xcode_settings": {"OTHER_CPLUSPLUSFLAGS": ["<!@(node scripts/native-sources.mjs isa-flags avx512)"]}
        },
        {
          "target_name": "kvserve_isa_avx512_bf16",
          "type": "static_library",
          "sources": ["<!@(node scripts/native-sources.mjs isa avx512_bf16)"],
          "cflags": ["<!@(node scripts/native-sources.mjs isa-flags avx512_bf16)"],
          "xcode_settings": {"OTHER_CPLUSPLUSFLAGS": ["<!@(node scripts/native-sources.mjs isa-flags avx512_bf16)"]}
        },
        {
          "target_name": "kvserve_isa_amx",
          "type": "static_library",
          "sources": ["<!@(node scripts/native-sources.mjs isa amx)"],
          "cflags": ["<!@(node scripts/native-sources.mjs isa-flags amx)"],
          "xcode_settings": {"OTHER_CPLUSPLUSFLAGS": ["<!@(node scripts/native-sources.mjs isa-flags amx)"]}
        }
      ]
    }]
  ]
}
