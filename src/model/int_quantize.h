// The one integer weight quantizer (round to nearest): --quantization int8|int4 at load
// (model/transforms.h) and `gale quantize --format int8|int4` both call it, so a checkpoint
// written by Gale holds exactly the codes, scales and zero points the load-time transform makes.
// It writes the layout model/weights.h's WeightScheme describes for integer weights.
//
// Rules (those of the peers' min-max observers; AWQ's search only changes what is fed in):
//   symmetric, b bits: s = amax / (2^(b-1) − 1) over the row or group, q = clamp(round(w / s),
//     −2^(b-1), 2^(b-1) − 1); INT8 stores q, INT4 stores q + 8 (the implied zero point);
//   asymmetric (INT4 only): the range [min(w, 0), max(w, 0)], s = (max − min) / 15,
//     z = clamp(round(−min / s), 0, 15), q = clamp(round(w / s) + z, 0, 15).
// round() is to nearest even (torch.round); s = 1 when the range is 0 or not finite.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace gale {

struct IntQuantSpec {
  int bits = 8;           // 8 (I8 codes) or 4 (U8, two codes per byte, lower nibble first)
  int64_t group = 0;      // columns per scale; 0: one scale per row (per channel)
  bool symmetric = true;  // false: a U8 zero point per scale (4 bits only)
};

// Scales per row: ceil(cols / group), or 1 per channel.
int64_t int_scales_per_row(const IntQuantSpec& q, int64_t cols);
// Bytes of codes per row: cols for 8 bits, cols / 2 for 4 (cols even).
int64_t int_code_bytes_per_row(const IntQuantSpec& q, int64_t cols);

// src: [rows, cols] of dtype (F32, F16 or BF16), row r starting ld elements after row r - 1;
// col_scale: [cols] f32 factors the weights are multiplied by before quantizing (AWQ's
// per-input-channel scaling; the activations are divided by the same factors), or null.
// codes: rows * int_code_bytes_per_row bytes; scales: rows * int_scales_per_row f32, row-major;
// zeros: the same count of U8 (asymmetric), else ignored (may be null). Runs on the thread pool.
void quantize_int(const void* src, DType dtype, int64_t rows, int64_t cols, int64_t ld, const IntQuantSpec& q,
                  const float* col_scale, uint8_t* codes, float* scales, uint8_t* zeros);

// The value weight (r, c) of such a matrix stands for, (q − z) · s rounded to f32: the
// definition the kernels (kernels/ref) and tests check against.
float int_weight(const uint8_t* codes, const float* scales, const uint8_t* zeros, const IntQuantSpec& q,
                 int64_t cols, int64_t r, int64_t c);

}  // namespace gale
