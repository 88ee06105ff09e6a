// Internal interface between matmul_bf16.cpp (packing, threads, write-back) and its ISA
// kernels matmul_bf16_{avx512bf16,amx}.cpp. Plain C types only, for the reason given in
// matmul_kernels.h (the ISA files are compiled with instruction-set flags).
#pragma once
#include <cstdint>

namespace gale::cpu::detail {

// Packed x: groups of 16 rows. Group g holds, for each column pair p (columns 2p, 2p + 1) of
// the padded width kp, the 16 rows' bf16 pairs: 64 bytes at xb + (g · kp / 2 + p) · 32,
// element 2i + c being x[16g + i, 2p + c]. Padding rows and columns are zero. This is the
// VNNI layout of an AMX B tile (16 column pairs × 16 rows) and, per pair, one vdpbf16ps operand.
//
// A block kernel multiplies 32 W rows (bf16, row stride ldw elements, kp ≥ 32 columns, kp a
// multiple of 32; the driver pads them) with num_pairs pairs of x groups (32 rows each, groups
// 2q and 2q + 1) over all kp columns, and writes
//   ct[q · 1024 + j · 32 + i] = Σ_k W[j, k] · xrow(32q + i)[k]      (j, i < 32)
// summed in f32.
using Bf16BlockFn = void (*)(const uint16_t* w, int64_t ldw, const uint16_t* xb, int64_t num_pairs, int64_t kp,
                             float* ct);

// AVX512-BF16 (vdpbf16ps) block kernel.
void bf16_block_avx512bf16(const uint16_t* w, int64_t ldw, const uint16_t* xb, int64_t num_pairs, int64_t kp,
                           float* ct);
// AMX-BF16 (tdpbf16ps) block kernel; the thread must have been granted tile data
// (amx_request_permission) before the first call.
void bf16_block_amx(const uint16_t* w, int64_t ldw, const uint16_t* xb, int64_t num_pairs, int64_t kp, float* ct);

}  // namespace gale::cpu::detail
