// Everything the CUDA backend is told from outside, read once: the device and memory share from
// the command line, and the A/B switches from the environment. Plain C++ (no CUDA headers), so
// the factory's BackendOptions can carry it in every build.
#pragma once

namespace gale {

struct CudaOptions {
  // From the command line (make_backend copies them from BackendOptions).
  int device = 0;                       // --device cuda:N
  double gpu_memory_utilization = 0.9;  // --gpu-memory-utilization: share of the card Gale may take

  // From the environment (cuda_options_from_env). Each turns one path off for side-by-side
  // measurements; all are on by default but fp8.
  bool graphs = true;       // GALE_CUDA_GRAPHS: decode steps replayed from CUDA graphs
  bool gemv = true;         // GALE_CUDA_GEMV: our GEMV for M <= 8 rows (else cuBLASLt)
  bool pdl = true;          // GALE_CUDA_PDL: programmatic dependent launch (Hopper and later)
  bool clusters = true;     // GALE_CUDA_CLUSTERS: decode attention merged in a cluster (Hopper and later)
  bool moe = true;          // GALE_CUDA_MOE: MoE routing and experts on the device
  bool gemv_rotate = true;  // GALE_GEMV_ROTATE: GEMV rows start at rotated pieces
  int gemv_unroll = 0;      // GALE_GEMV_UNROLL: 4 or 8 loads in flight per lane; 0 ("auto"): by width
  // GALE_CUDA_FP8=1: FP8 weights stay FP8 on the device (the FP8 GEMV, W8A8 GEMM). Off by
  // default until those kernels have run on a GPU (written without one, 2026-12-07): FP8
  // weights are dequantized to bf16 at upload and run by the bf16 kernels.
  bool fp8 = false;
  bool fp8_w8a8 = true;     // GALE_CUDA_W8A8: prefill products with per-channel FP8 weights as W8A8
  // GALE_CUDA_FP8_GROUPS: W8A8 with x in 1 x 128 groups, scaled inside cuBLASLt's product
  // (kernels/cuda/gemm_lt.cuh); off: the per-token outer-scale / scalar-product paths.
  bool fp8_groups = true;
  // GALE_CUDA_INT=1: integer weights (INT8 / INT4, model/weights.h) stay packed on the device for
  // the integer GEMV / GEMM (kernels/cuda/gemm_int.cuh). Opt-in, as fp8 is, until those kernels
  // have run on a GPU (they were written and compiled without one); by default integer weights
  // are dequantized to bf16 at upload and run by the bf16 kernels.
  bool int_weights = false;
  // GALE_INT_GEMM_MAX_M: the most rows the integer tensor-core GEMM takes; larger products
  // dequantize W to bf16 in pieces and run cuBLASLt.
  int int_gemm_max_m = 64;
  // GALE_CUDA_FUSE: a comma list of the fusions to use (default: all; empty: none).
  bool fuse_rope = true;  // "rope": RoPE with the K/V write
  bool fuse_norm = true;  // "norm": RMSNorm inside the decode GEMV (needs gemv)
  bool fuse_silu = true;  // "silu": gate|up interleaved at load, SiLU-mul in the GEMV's epilogue
  bool fuse_qkv = true;   // "qkv": RoPE and the K/V write in the q|k|v GEMV's epilogue (with norm)
  // GALE_PROFILE (set to anything, as the engine reads it): median GPU time per greedy step on
  // stderr when the backend is destroyed.
  bool profile = false;
};

// The environment's switches over the defaults above. The on/off switches take 0 or 1 (empty
// means unset); a malformed value is a gale::Error naming the variable.
CudaOptions cuda_options_from_env();

}  // namespace gale
