// Scalar reference for the expert half of an MoE layer (Backend::moe_experts: the host path of
// model/backend.cpp, kernels/cuda moe_route + moe_grouped_gemm + moe_combine): routing and the
// weighted combine of the experts' SwiGLU outputs. The specification their tests compare against.
#pragma once
#include <cstdint>
#include <span>

#include "core/dtype.h"

namespace gale::ref {

// Per token t: p = softmax over the E router logits [T, E] (row stride ld; in double), the K
// experts of largest p (ties: the lower expert first), in that order, into ids [T, K] and their
// p into weights [T, K], divided by the K's sum when norm_topk_prob (Mixtral).
void moe_route(const float* logits, int64_t ld, int64_t T, int64_t E, int64_t K, bool norm_topk_prob, int32_t* ids,
               float* weights);

struct ExpertRef {
  const void* gate;  // [inter, hidden]
  const void* up;    // [inter, hidden]
  const void* down;  // [hidden, inter]
  DType dtype;
};

// x[t] += sum_k weights[t, k] * swiglu_{ids[t, k]}(xn[t]) (activation_ref.h's swiglu), the sum
// over k in double. xn [T, hidden] (stride ldxn), x [T, hidden] (stride ldx).
void moe_combine(const float* xn, int64_t ldxn, int64_t T, int64_t hidden, int64_t inter,
                 std::span<const ExpertRef> experts, const int32_t* ids, const float* weights, int64_t K, float* x,
                 int64_t ldx);

}  // namespace gale::ref
