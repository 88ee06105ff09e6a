// Scalar reference for the gated MLP's activation (kernels/cpu silu_mul, kernels/cuda silu_mul)
// and for the SwiGLU block it is part of: the specification their tests compare against.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace gale::ref {

// out[r, i] = silu(gate[r, i]) * up[r, i], silu(g) = g / (1 + exp(-g)), in double; n rows of d
// (strides ldg, ldu, ldo). out may alias gate.
void silu_mul(const float* gate, int64_t ldg, const float* up, int64_t ldu, int64_t n, int64_t d, float* out,
              int64_t ldo);

// One gated MLP over n rows: y (=|+=) (silu(x · gateᵀ) * (x · upᵀ)) · downᵀ, with x [n, hidden]
// (stride ldx), gate/up [inter, hidden] and down [hidden, inter] in dtype wdt, y [n, hidden]
// (stride ldy). Each product through ref::matmul, the intermediate kept in f32.
void swiglu(const float* x, int64_t ldx, int64_t n, int64_t hidden, int64_t inter, const void* gate, const void* up,
            const void* down, DType wdt, float* y, int64_t ldy, bool accumulate);

}  // namespace gale::ref
