#include "kernels/cuda/gemm_lt.cuh"

#include "kernels/cuda/fp8_convert.cuh"

#include <cublasLt.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <unordered_map>

namespace gale::cuda {

namespace {

struct PlanKey {
  int64_t M, N, K, ldx, ldw, ldy;
  int ydt, acc, align;  // align: log2 of the common pointer alignment (capped at 256 B)
  int fp8 = 0;          // 1: E4M3 W and x with outer-vector scales (gemm_fp8's W8A8 plan);
                        // 2: the same product unscaled into f32 (scales applied after it);
                        // 3: 1 x 128 group scales on both (VEC128 x VEC128);
                        // 4: 128 x 128 block scales on W, 1 x 128 groups on x
  bool operator==(const PlanKey&) const = default;
};
struct PlanKeyHash {
  size_t operator()(const PlanKey& k) const {
    size_t h = 1469598103934665603ull;
    for (int64_t v : {k.M, k.N, k.K, k.ldx, k.ldw, k.ldy, int64_t(k.ydt), int64_t(k.acc), int64_t(k.align),
                      int64_t(k.fp8)})
      h = (h ^ size_t(v)) * 1099511628211ull;
    return h;
  }
};
struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool ok = true;  // false: cuBLASLt has no kernel for it (an FP8 plan; gemm_fp8 falls back)
  bool fp8_outer = false;  // an FP8 plan with outer-vector scales (PlanKey::fp8 == 1)
};

int align_log2(uintptr_t v) {
  int l = 0;
  while (l < 8 && !(v & (uintptr_t(1) << l))) ++l;
  return l;
}

}  // namespace

struct GemmContext {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  std::unordered_map<PlanKey, Plan, PlanKeyHash> plans;
  std::string last_error;
  const char* fp8_path = "";  // gemm_fp8_last_path
  // gemm_fp8's scratch: the quantized activations and their scales, or a piece of dequantized W.
  void* scratch = nullptr;
  size_t scratch_bytes = 0;
  bool fp8_groups = true;  // gemm_set_fp8_group_scales
  // Per-row FP8 weight scales repeated over each row's 1 x 128 groups (VEC128 for W), made on a
  // weight's first W8A8 product and kept for the context's life: N * K / 128 floats a weight.
  std::unordered_map<const float*, float*> group_scales;
};

namespace {

cudaError_t grow_scratch(GemmContext* ctx, size_t bytes) {
  if (bytes <= ctx->scratch_bytes) return cudaSuccess;
  bytes = std::max(bytes, ctx->scratch_bytes * 2);
  if (ctx->scratch) GALE_CUDA_TRY(cudaFree(ctx->scratch));  // synchronizes: prefill steps only, rarely
  ctx->scratch = nullptr;
  ctx->scratch_bytes = 0;
  GALE_CUDA_TRY(cudaMalloc(&ctx->scratch, bytes));
  ctx->scratch_bytes = bytes;
  return cudaSuccess;
}

}  // namespace

cudaError_t gemm_context_create(GemmContext** out, size_t workspace_bytes) {
  *out = nullptr;
  auto* ctx = new GemmContext;
  ctx->workspace_bytes = workspace_bytes ? workspace_bytes : size_t(32) << 20;
  if (cublasLtCreate(&ctx->handle) != CUBLAS_STATUS_SUCCESS) {
    delete ctx;
    return cudaErrorInitializationError;
  }
  cudaError_t err = cudaMalloc(&ctx->workspace, ctx->workspace_bytes);
  if (err != cudaSuccess) {
    cublasLtDestroy(ctx->handle);
    delete ctx;
    return err;
  }
  *out = ctx;
  return cudaSuccess;
}

void gemm_context_destroy(GemmContext* ctx) {
  if (!ctx) return;
  for (auto& [k, pl] : ctx->plans) {
    cublasLtMatrixLayoutDestroy(pl.a);
    cublasLtMatrixLayoutDestroy(pl.b);
    cublasLtMatrixLayoutDestroy(pl.c);
    cublasLtMatmulDescDestroy(pl.desc);
  }
  for (auto& [w, s] : ctx->group_scales) cudaFree(s);
  cudaFree(ctx->workspace);
  cudaFree(ctx->scratch);
  cublasLtDestroy(ctx->handle);
  delete ctx;
}

const char* gemm_last_error(const GemmContext* ctx) { return ctx->last_error.c_str(); }
const char* gemm_fp8_last_path(const GemmContext* ctx) { return ctx->fp8_path; }
void gemm_set_fp8_group_scales(GemmContext* ctx, bool on) { ctx->fp8_groups = on; }
size_t gemm_cached_plans(const GemmContext* ctx) { return ctx->plans.size(); }

#define GALE_LT_TRY(call)                                                                      \
  do {                                                                                         \
    cublasStatus_t st_ = (call);                                                               \
    if (st_ != CUBLAS_STATUS_SUCCESS) {                                                        \
      ctx->last_error = std::string(#call) + ": " + cublasLtGetStatusString(st_);              \
      return cudaErrorNotSupported;                                                            \
    }                                                                                          \
  } while (0)

// Row-major y[M,N] = x[M,K]·W[N,K]ᵀ is column-major yᵀ[N,M] = W'ᵀ·x' with W' = W viewed as
// column-major [K,N] and x' = x as column-major [K,M]: cuBLASLt A = W (op T), B = x (op N).
// The FP8 plan is the same product over E4M3 W and x (K-major both: the "TN" layout FP8 needs),
// each column of the result scaled by W's row scale and each row by x's (outer-vector scales).
static cudaError_t make_plan(GemmContext* ctx, const PlanKey& k, Plan* pl) {
  const cudaDataType_t yt = k.ydt == int(DType::F32) ? CUDA_R_32F : CUDA_R_16BF;
  const cudaDataType_t in_t = k.fp8 ? CUDA_R_8F_E4M3 : CUDA_R_16BF;
  GALE_LT_TRY(cublasLtMatmulDescCreate(&pl->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  GALE_LT_TRY(cublasLtMatmulDescSetAttribute(pl->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
  GALE_LT_TRY(cublasLtMatmulDescSetAttribute(pl->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
  if (k.fp8 == 1 || k.fp8 == 3 || k.fp8 == 4) {
    // A = W, B = x (the mapping above): the scale grid of each in cuBLASLt's terms.
    const int32_t a_mode = k.fp8 == 1   ? CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F
                           : k.fp8 == 3 ? CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F
                                        : CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
    const int32_t b_mode = k.fp8 == 1 ? CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F : CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
    GALE_LT_TRY(cublasLtMatmulDescSetAttribute(pl->desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &a_mode, sizeof a_mode));
    GALE_LT_TRY(cublasLtMatmulDescSetAttribute(pl->desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &b_mode, sizeof b_mode));
    // A vector scale mode with no scale pointer is an invalid value to the heuristic (the first
    // device runs: every such plan refused, CUBLAS_STATUS_INVALID_VALUE): stand-ins in device
    // memory for the query; each product sets its own before it runs.
    const void* stand_in = ctx->workspace;
    GALE_LT_TRY(cublasLtMatmulDescSetAttribute(pl->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &stand_in, sizeof stand_in));
    GALE_LT_TRY(cublasLtMatmulDescSetAttribute(pl->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &stand_in, sizeof stand_in));
  }
  GALE_LT_TRY(cublasLtMatrixLayoutCreate(&pl->a, in_t, uint64_t(k.K), uint64_t(k.N), k.ldw));
  GALE_LT_TRY(cublasLtMatrixLayoutCreate(&pl->b, in_t, uint64_t(k.K), uint64_t(k.M), k.ldx));
  GALE_LT_TRY(cublasLtMatrixLayoutCreate(&pl->c, yt, uint64_t(k.N), uint64_t(k.M), k.ldy));
  cublasLtMatmulPreference_t pref = nullptr;
  GALE_LT_TRY(cublasLtMatmulPreferenceCreate(&pref));
  const uint32_t align = 1u << k.align;
  cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                           &ctx->workspace_bytes, sizeof ctx->workspace_bytes);
  for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
    if (st == CUBLAS_STATUS_SUCCESS) st = cublasLtMatmulPreferenceSetAttribute(pref, attr, &align, sizeof align);
  cublasLtMatmulHeuristicResult_t res{};
  int found = 0;
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulAlgoGetHeuristic(ctx->handle, pl->desc, pl->a, pl->b, pl->c, pl->c, pref, 1, &res, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  GALE_LT_TRY(st);
  if (found < 1) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "cuBLASLt: no algorithm for M=%lld N=%lld K=%lld", (long long)k.M, (long long)k.N,
                  (long long)k.K);
    ctx->last_error = buf;
    return cudaErrorNotSupported;
  }
  pl->algo = res.algo;
  pl->fp8_outer = k.fp8 == 1 || k.fp8 == 3 || k.fp8 == 4;
  return cudaSuccess;
}

namespace {

// The cached plan for key (made on first use); nullptr with ctx->last_error set when cuBLASLt
// refuses it. A refused FP8 plan is cached too (ok = false), so the query is not repeated.
const Plan* find_plan(GemmContext* ctx, const PlanKey& key, cudaError_t* err) {
  auto it = ctx->plans.find(key);
  if (it == ctx->plans.end()) {
    Plan pl;
    *err = make_plan(ctx, key, &pl);
    if (*err != cudaSuccess) {
      if (pl.a) cublasLtMatrixLayoutDestroy(pl.a);
      if (pl.b) cublasLtMatrixLayoutDestroy(pl.b);
      if (pl.c) cublasLtMatrixLayoutDestroy(pl.c);
      if (pl.desc) cublasLtMatmulDescDestroy(pl.desc);
      if (!key.fp8) return nullptr;
      pl = Plan{};
      pl.ok = false;
    }
    it = ctx->plans.emplace(key, pl).first;
  }
  *err = it->second.ok ? cudaSuccess : cudaErrorNotSupported;
  return it->second.ok ? &it->second : nullptr;
}

}  // namespace

cudaError_t gemm_scratch(GemmContext* ctx, size_t bytes, void** p) {
  GALE_CUDA_TRY(grow_scratch(ctx, bytes));
  *p = ctx->scratch;
  return cudaSuccess;
}

cudaError_t gemm_bf16(GemmContext* ctx, const GemmParams& p, cudaStream_t stream) {
  if (p.M <= 0 || p.N <= 0) return cudaSuccess;
  if (p.K <= 0 || p.w_dtype != DType::BF16 || (p.y_dtype != DType::BF16 && p.y_dtype != DType::F32) || p.ldx < p.K ||
      p.ldw < p.K || p.ldy < p.N)
    return cudaErrorInvalidValue;
  const size_t ysz = p.y_dtype == DType::F32 ? 4 : 2;
  const uintptr_t bits = uintptr_t(p.x) | uintptr_t(p.w) | uintptr_t(p.y) | uintptr_t(p.ldx * 2) |
                         uintptr_t(p.ldw * 2) | uintptr_t(p.ldy * ysz);
  const PlanKey key{p.M, p.N, p.K, p.ldx, p.ldw, p.ldy, int(p.y_dtype), p.accumulate ? 1 : 0, align_log2(bits)};
  cudaError_t err = cudaSuccess;
  const Plan* pl = find_plan(ctx, key, &err);
  if (!pl) return err;
  const float alpha = 1.0f, beta = p.accumulate ? 1.0f : 0.0f;
  GALE_LT_TRY(cublasLtMatmul(ctx->handle, pl->desc, &alpha, p.w, pl->a, p.x, pl->b, &beta, p.y, pl->c, p.y, pl->c,
                             &pl->algo, ctx->workspace, ctx->workspace_bytes, stream));
  return cudaGetLastError();
}

namespace {

// W8A8: x to E4M3 per token in the scratch, then the FP8 plan with outer-vector scales; where
// cuBLASLt refuses that mode for the shape, the unscaled FP8 product into f32 scratch and
// scale_outer. cudaErrorNotSupported when neither plan exists (the caller falls back).
cudaError_t gemm_w8a8(GemmContext* ctx, const GemmParams& p, cudaStream_t stream) {
  const int64_t ldq = (p.K + 15) / 16 * 16;  // 16-byte rows
  const size_t qbytes = (size_t(p.M * ldq) + 255) / 256 * 256;
  const size_t sbytes = (size_t(p.M) * 4 + 255) / 256 * 256;
  const size_t ysz = p.y_dtype == DType::F32 ? 4 : 2;
  const uintptr_t bits = uintptr_t(p.w) | uintptr_t(p.y) | uintptr_t(ldq) | uintptr_t(p.ldw) | uintptr_t(p.ldy * ysz);
  PlanKey key{p.M, p.N, p.K, ldq, p.ldw, p.ldy, int(p.y_dtype), p.accumulate ? 1 : 0, align_log2(bits)};
  key.fp8 = 1;
  cudaError_t err = cudaSuccess;
  const Plan* pl = find_plan(ctx, key, &err);
  // The scalar plan: f32 D of N-wide rows in the scratch after q and the x scales (256-byte
  // aligned), no accumulation (scale_outer accumulates).
  const int64_t ldd = (p.N + 63) / 64 * 64;
  if (!pl) {
    PlanKey k2{p.M, p.N, p.K, ldq, p.ldw, ldd, int(DType::F32), 0,
               align_log2(uintptr_t(p.w) | uintptr_t(ldq) | uintptr_t(p.ldw) | uintptr_t(ldd * 4) | 256)};
    k2.fp8 = 2;
    pl = find_plan(ctx, k2, &err);
    if (!pl) return err;
  }
  const bool outer = pl->fp8_outer;
  GALE_CUDA_TRY(grow_scratch(ctx, qbytes + sbytes + (outer ? 0 : size_t(p.M * ldd) * 4)));
  uint8_t* q = static_cast<uint8_t*>(ctx->scratch);
  float* xs = reinterpret_cast<float*>(q + qbytes);
  GALE_CUDA_TRY(quantize_rows_fp8({p.x, p.ldx, q, ldq, xs, p.M, p.K}, stream));
  if (outer) {
    GALE_LT_TRY(cublasLtMatmulDescSetAttribute(pl->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &p.w_scale,
                                               sizeof p.w_scale));
    GALE_LT_TRY(cublasLtMatmulDescSetAttribute(pl->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &xs, sizeof xs));
    const float alpha = 1.0f, beta = p.accumulate ? 1.0f : 0.0f;
    GALE_LT_TRY(cublasLtMatmul(ctx->handle, pl->desc, &alpha, p.w, pl->a, q, pl->b, &beta, p.y, pl->c, p.y, pl->c,
                               &pl->algo, ctx->workspace, ctx->workspace_bytes, stream));
    ctx->fp8_path = "w8a8-outer";
    return cudaGetLastError();
  }
  float* d = reinterpret_cast<float*>(q + qbytes + sbytes);
  const float alpha = 1.0f, beta = 0.0f;
  GALE_LT_TRY(cublasLtMatmul(ctx->handle, pl->desc, &alpha, p.w, pl->a, q, pl->b, &beta, d, pl->c, d, pl->c, &pl->algo,
                             ctx->workspace, ctx->workspace_bytes, stream));
  GALE_CUDA_TRY(scale_outer({d, ldd, p.w_scale, p.ws_ld, xs, p.y, p.ldy, p.y_dtype, p.M, p.N, p.accumulate}, stream));
  ctx->fp8_path = "w8a8-scalar";
  return cudaSuccess;
}

// W8A8 with 1 x 128 group scales, scaled inside cuBLASLt's product (Hopper's VEC128 and
// BLK128x128 modes): x to E4M3 per token and 128-column group, W's scales as VEC128 (a per-row
// scale repeated over the row's groups) or as the 128 x 128 blocks they are. One pass over x,
// one product straight into y: no f32 product and no separate scale pass. cudaErrorNotSupported
// where the shape or the scale grid does not fit, or cuBLASLt has no kernel (the caller goes on).
cudaError_t gemm_w8a8_groups(GemmContext* ctx, const GemmParams& p, cudaStream_t stream) {
  constexpr int64_t G = 128;
  const bool per_row = p.ws_rows == 1 && p.ws_cols >= p.K;
  const int64_t groups = p.K / G;
  const bool blocks = p.ws_rows == G && p.ws_cols == G && p.ws_ld == groups;
  if (p.K % G != 0 || !(per_row || blocks)) return cudaErrorNotSupported;
  const int64_t ldq = p.K;  // a multiple of 128: 16-byte rows
  const size_t qbytes = (size_t(p.M * ldq) + 255) / 256 * 256;
  const size_t sbytes = (size_t(p.M * groups) * 4 + 255) / 256 * 256;
  const size_t ysz = p.y_dtype == DType::F32 ? 4 : 2;
  const uintptr_t bits = uintptr_t(p.w) | uintptr_t(p.y) | uintptr_t(ldq) | uintptr_t(p.ldw) | uintptr_t(p.ldy * ysz);
  PlanKey key{p.M, p.N, p.K, ldq, p.ldw, p.ldy, int(p.y_dtype), p.accumulate ? 1 : 0, align_log2(bits)};
  key.fp8 = per_row ? 3 : 4;
  cudaError_t err = cudaSuccess;
  const Plan* pl = find_plan(ctx, key, &err);
  if (!pl) return err;
  const float* ws = p.w_scale;
  if (per_row) {
    auto it = ctx->group_scales.find(p.w_scale);
    if (it == ctx->group_scales.end()) {
      float* s = nullptr;
      GALE_CUDA_TRY(cudaMalloc(&s, size_t(p.N * groups) * 4));
      if (cudaError_t e = expand_row_scales(p.w_scale, p.ws_ld, p.N, groups, s, stream); e != cudaSuccess) {
        cudaFree(s);
        return e;
      }
      it = ctx->group_scales.emplace(p.w_scale, s).first;
    }
    ws = it->second;
  }
  GALE_CUDA_TRY(grow_scratch(ctx, qbytes + sbytes));
  uint8_t* q = static_cast<uint8_t*>(ctx->scratch);
  float* xs = reinterpret_cast<float*>(q + qbytes);
  QuantizeRowsFp8Params qp{p.x, p.ldx, q, ldq, xs, p.M, p.K};
  qp.group = G;
  GALE_CUDA_TRY(quantize_rows_fp8(qp, stream));
  GALE_LT_TRY(cublasLtMatmulDescSetAttribute(pl->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &ws, sizeof ws));
  GALE_LT_TRY(cublasLtMatmulDescSetAttribute(pl->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &xs, sizeof xs));
  const float alpha = 1.0f, beta = p.accumulate ? 1.0f : 0.0f;
  GALE_LT_TRY(cublasLtMatmul(ctx->handle, pl->desc, &alpha, p.w, pl->a, q, pl->b, &beta, p.y, pl->c, p.y, pl->c,
                             &pl->algo, ctx->workspace, ctx->workspace_bytes, stream));
  ctx->fp8_path = per_row ? "w8a8-vec128" : "w8a8-blk128";
  return cudaGetLastError();
}

}  // namespace

cudaError_t gemm_fp8(GemmContext* ctx, const GemmParams& p, cudaStream_t stream, bool w8a8) {
  if (p.M <= 0 || p.N <= 0) return cudaSuccess;
  if (p.K <= 0 || p.w_dtype != DType::F8_E4M3 || !p.w_scale || p.ws_rows < 1 || p.ws_cols < 1 ||
      (p.y_dtype != DType::BF16 && p.y_dtype != DType::F32) || p.ldx < p.K || p.ldw < p.K || p.ldy < p.N)
    return cudaErrorInvalidValue;
  const bool aligned = p.K % 16 == 0 && p.ldw % 16 == 0 && (reinterpret_cast<uintptr_t>(p.w) & 15) == 0;
  if (w8a8 && ctx->fp8_groups && aligned) {
    const cudaError_t e = gemm_w8a8_groups(ctx, p, stream);
    if (e != cudaErrorNotSupported) return e;
  }
  if (w8a8 && p.ws_rows == 1 && p.ws_cols >= p.K && aligned) {
    const cudaError_t e = gemm_w8a8(ctx, p, stream);
    if (e != cudaErrorNotSupported) return e;
  }
  ctx->fp8_path = "dequantize";
  // W's rows dequantized to bf16 a piece at a time (at most 64 MiB, whole 128-row blocks), each
  // piece one bf16 product into its columns of y.
  const int64_t ldd = (p.K + 7) / 8 * 8;
  int64_t rows = std::max<int64_t>(128, (int64_t(64) << 20) / (ldd * 2) / 128 * 128);
  rows = std::min(rows, p.N);
  GALE_CUDA_TRY(grow_scratch(ctx, size_t(rows * ldd) * 2));
  const size_t ysz = p.y_dtype == DType::F32 ? 4 : 2;
  for (int64_t r0 = 0; r0 < p.N; r0 += rows) {
    const int64_t n = std::min(rows, p.N - r0);
    GALE_CUDA_TRY(dequantize_fp8({p.w, p.ldw, p.w_scale, p.ws_rows, p.ws_cols, p.ws_ld, r0, n, p.K, ctx->scratch, ldd},
                                stream));
    GemmParams q = p;
    q.w = ctx->scratch;
    q.ldw = ldd;
    q.w_dtype = DType::BF16;
    q.w_scale = nullptr;
    q.N = n;
    q.y = static_cast<uint8_t*>(p.y) + size_t(r0) * ysz;
    GALE_CUDA_TRY(gemm_bf16(ctx, q, stream));
  }
  return cudaSuccess;
}

}  // namespace gale::cuda
