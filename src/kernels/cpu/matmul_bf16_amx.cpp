// AMX-BF16 block kernel of the bf16 GEMM (matmul_bf16.cpp), for CPUs with AMX tiles (Sapphire
// Rapids and later). Compiled with -mamx-tile -mamx-bf16, called only after matmul_bf16.cpp
// found AMX-BF16 in CPUID and the kernel granted this process the tile data state.
//
// One tdpbf16ps multiplies a 16 × 32 bf16 tile A by a 32 × 16 tile B (stored as 16 rows of
// 16 column pairs, the layout x is packed in) into 16 × 16 f32 sums: 8192 products per
// instruction against vdpbf16ps's 32. Here A is 16 W rows read in place (row stride ldw) and
// B one group of 16 x rows, so each C tile holds C[n][m] = Σ_k W[n, k] · x[m, k], the
// ct layout of matmul_bf16_kernels.h. Tiles: C 0..3 (2 W halves × 2 x groups), A 4..5, B 6..7.
#include <immintrin.h>

#include <cstring>

#include "kernels/cpu/matmul_bf16_kernels.h"

namespace gale::cpu::detail {
namespace {

// The 64-byte tile configuration (palette 1): every tile used is 16 rows of 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

TileConfig make_config() {
  TileConfig c;
  std::memset(&c, 0, sizeof c);
  c.palette_id = 1;
  for (int t = 0; t < 8; ++t) {
    c.colsb[t] = 64;
    c.rows[t] = 16;
  }
  return c;
}

}  // namespace

void bf16_block_amx(const uint16_t* w, int64_t ldw, const uint16_t* xb, int64_t num_pairs, int64_t kp, float* ct) {
  static const TileConfig kConfig = make_config();
  _tile_loadconfig(&kConfig);
  const int64_t group = kp / 2 * 32;  // elements per packed group
  const int64_t wstride = ldw * 2;    // bytes between W rows
  const uint16_t* w1 = w + 16 * ldw;
  for (int64_t q = 0; q < num_pairs; ++q) {
    const uint16_t* x0 = xb + 2 * q * group;
    const uint16_t* x1 = x0 + group;
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t k = 0; k < kp; k += 32) {
      _tile_loadd(4, w + k, wstride);
      _tile_loadd(5, w1 + k, wstride);
      _tile_loadd(6, x0 + k * 16, 64);  // column pairs k/2 .. k/2 + 15 of group 2q
      _tile_loadd(7, x1 + k * 16, 64);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
    float* c = ct + q * 1024;  // [32 W rows][32 x rows], 128 bytes a row
    _tile_stored(0, c, 128);
    _tile_stored(1, c + 16, 128);
    _tile_stored(2, c + 16 * 32, 128);
    _tile_stored(3, c + 16 * 32 + 16, 128);
  }
  // Give the tile state back: a thread holding configured tiles makes every context switch
  // save and restore 8 KiB more.
  _tile_release();
}

}  // namespace gale::cpu::detail
