#include "kernels/cuda/gemm_lt.cuh"

#include <cublasLt.h>

#include <cstdio>
#include <string>
#include <unordered_map>

namespace gale::cuda {

namespace {

struct PlanKey {
  int64_t M, N, K, ldx, ldw, ldy;
  int ydt, acc, align;  // align: log2 of the common pointer alignment (capped at 256 B)
  bool operator==(const PlanKey&) const = default;
};
struct PlanKeyHash {
  size_t operator()(const PlanKey& k) const {
    size_t h = 1469598103934665603ull;
    for (int64_t v : {k.M, k.N, k.K, k.ldx, k.ldw, k.ldy, int64_t(k.ydt), int64_t(k.acc), int64_t(k.align)})
      h = (h ^ size_t(v)) * 1099511628211ull;
    return h;
  }
};
struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
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
};

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
  cudaFree(ctx->workspace);
  cublasLtDestroy(ctx->handle);
  delete ctx;
}

const char* gemm_last_error(const GemmContext* ctx) { return ctx->last_error.c_str(); }
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
static cudaError_t make_plan(GemmContext* ctx, const PlanKey& k, Plan* pl) {
  const cudaDataType_t yt = k.ydt == int(DType::F32) ? CUDA_R_32F : CUDA_R_16BF;
  GALE_LT_TRY(cublasLtMatmulDescCreate(&pl->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  GALE_LT_TRY(cublasLtMatmulDescSetAttribute(pl->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
  GALE_LT_TRY(cublasLtMatmulDescSetAttribute(pl->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
  GALE_LT_TRY(cublasLtMatrixLayoutCreate(&pl->a, CUDA_R_16BF, uint64_t(k.K), uint64_t(k.N), k.ldw));
  GALE_LT_TRY(cublasLtMatrixLayoutCreate(&pl->b, CUDA_R_16BF, uint64_t(k.K), uint64_t(k.M), k.ldx));
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
  return cudaSuccess;
}

cudaError_t gemm_bf16(GemmContext* ctx, const GemmParams& p, cudaStream_t stream) {
  if (p.M <= 0 || p.N <= 0) return cudaSuccess;
  if (p.K <= 0 || (p.y_dtype != DType::BF16 && p.y_dtype != DType::F32) || p.ldx < p.K || p.ldw < p.K || p.ldy < p.N)
    return cudaErrorInvalidValue;
  const size_t ysz = p.y_dtype == DType::F32 ? 4 : 2;
  const uintptr_t bits = uintptr_t(p.x) | uintptr_t(p.w) | uintptr_t(p.y) | uintptr_t(p.ldx * 2) |
                         uintptr_t(p.ldw * 2) | uintptr_t(p.ldy * ysz);
  const PlanKey key{p.M, p.N, p.K, p.ldx, p.ldw, p.ldy, int(p.y_dtype), p.accumulate ? 1 : 0, align_log2(bits)};
  auto it = ctx->plans.find(key);
  if (it == ctx->plans.end()) {
    Plan pl;
    cudaError_t err = make_plan(ctx, key, &pl);
    if (err != cudaSuccess) {
      if (pl.a) cublasLtMatrixLayoutDestroy(pl.a);
      if (pl.b) cublasLtMatrixLayoutDestroy(pl.b);
      if (pl.c) cublasLtMatrixLayoutDestroy(pl.c);
      if (pl.desc) cublasLtMatmulDescDestroy(pl.desc);
      return err;
    }
    it = ctx->plans.emplace(key, pl).first;
  }
  const Plan& pl = it->second;
  const float alpha = 1.0f, beta = p.accumulate ? 1.0f : 0.0f;
  GALE_LT_TRY(cublasLtMatmul(ctx->handle, pl.desc, &alpha, p.w, pl.a, p.x, pl.b, &beta, p.y, pl.c, p.y, pl.c, &pl.algo,
                             ctx->workspace, ctx->workspace_bytes, stream));
  return cudaGetLastError();
}

}  // namespace gale::cuda
