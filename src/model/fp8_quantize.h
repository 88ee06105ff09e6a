// The one FP8 weight quantizer: --quantization fp8 at load (model/transforms.h) and
// `gale quantize` (model/quantize_checkpoint.h) both call it, so a checkpoint written per channel
// holds exactly the codes and scales the load-time transform makes.
//
// The offline quantizers' rule (llm-compressor's minmax observer, transformers' FineGrainedFP8):
// each scale is amax / 448 over its tensor, row or block (1 when amax is 0 or not finite), each
// code the E4M3 value of w / scale rounded to nearest even and saturated at ±448
// (core/dtype.h f32_to_f8e4m3).
#pragma once
#include <cstdint>

#include "core/dtype.h"
#include "loader/quant_config.h"

namespace gale {

using Fp8Granularity = QuantConfig::Granularity;

// Scales a [rows, cols] matrix gets: Tensor 1, Channel rows, Block ceil(rows / b) * ceil(cols / b).
int64_t fp8_scale_count(Fp8Granularity g, int64_t rows, int64_t cols, int64_t block);

// src: [rows, cols] of dtype (F32, F16 or BF16), row r starting ld elements after row r - 1.
// codes: [rows, cols] E4M3, packed. scales: fp8_scale_count() f32 values, row-major
// ([ceil(rows / b), ceil(cols / b)] for Block). Runs on the thread pool.
void quantize_fp8(const void* src, DType dtype, int64_t rows, int64_t cols, int64_t ld, Fp8Granularity g,
                  int64_t block, uint8_t* codes, float* scales);
// The two halves of quantize_fp8, for a writer that must emit the scales before the codes
// (model/quantize_checkpoint.cpp) without holding the codes: the same scales, the same codes.
void fp8_scales(const void* src, DType dtype, int64_t rows, int64_t cols, int64_t ld, Fp8Granularity g, int64_t block,
                float* scales);
void fp8_encode(const void* src, DType dtype, int64_t rows, int64_t cols, int64_t ld, Fp8Granularity g, int64_t block,
                const float* scales, uint8_t* codes);

}  // namespace gale
