{
  # node-gyp build (npm install fallback and prebuildify). Sources come from scripts/sources.js,
  # the same list CMakeLists.txt uses. With a CUDA toolkit (scripts/cuda.js) the .cu files are
  # compiled by nvcc through a rule and the CUDA runtime is linked statically.
  "variables": {
    "mb_cuda%": "<!(node scripts/cuda.js enabled)",
    "mb_cuda_home%": "<!(node scripts/cuda.js home)"
  },
  "targets": [
    {
      "target_name": "megabeam",
      "sources": ["<!@(node scripts/sources.js cpp)"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")", "csrc"],
      "defines": ["NAPI_CPP_EXCEPTIONS", "NAPI_VERSION=8", "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17", "-std=gnu++20"],
      "cflags_cc": ["-std=c++17", "-O3", "-ffp-contract=off", "-fexceptions"],
      "libraries": ["-ldl"],
      "conditions": [
        ["mb_cuda==1", {
          "sources": ["<!@(node scripts/sources.js cu)"],
          "defines": ["MEGABEAM_CUDA", "MB_CUDA_ARCHS=<!(node scripts/cuda.js archs-define)"],
          "include_dirs": ["<(mb_cuda_home)/include"],
          "libraries": ["<(mb_cuda_home)/lib64/libcudart_static.a", "-ldl", "-lrt", "-lpthread"],
          "rules": [{
            "rule_name": "nvcc",
            "extension": "cu",
            "inputs": ["scripts/nvcc.js", "scripts/cuda.js"],
            "outputs": ["<(INTERMEDIATE_DIR)/<(RULE_INPUT_ROOT).o"],
            "action": ["node", "scripts/nvcc.js", "<(RULE_INPUT_PATH)", "<(INTERMEDIATE_DIR)/<(RULE_INPUT_ROOT).o"],
            "message": "nvcc <(RULE_INPUT_PATH)",
            "process_outputs_as_sources": 1
          }]
        }]
      ]
    }
  ]
}
