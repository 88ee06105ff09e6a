// The CUDA backend's construction, memory and ops: each Backend op launches kernels of
// kernels/cuda on the one stream (GEMMs through our GEMV for decode batches, else cuBLASLt).
// The weight upload is cuda_weights.cpp, the per-step plan and CUDA graphs cuda_step_graphs.cpp;
// the class is cuda_backend_impl.h.
#include "model/cuda/cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "core/error.h"
#include "kernels/cuda/argmax.cuh"
#include "kernels/cuda/decode_attention.cuh"
#include "kernels/cuda/embedding.cuh"
#include "kernels/cuda/head_rmsnorm.cuh"
#include "kernels/cuda/moe_grouped_gemm.cuh"
#include "kernels/cuda/moe_route.cuh"
#include "kernels/cuda/prefill_attention.cuh"
#include "kernels/cuda/rmsnorm_residual.cuh"
#include "kernels/cuda/rope.cuh"
#include "kernels/cuda/rope_kv_write.cuh"
#include "kernels/cuda/scatter_add_rows.cuh"
#include "kernels/cuda/silu_mul.cuh"
#include "model/cuda/cuda_backend_impl.h"

namespace gale {

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

std::string CudaBackend::gib(size_t bytes) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2f GiB", double(bytes) / double(1ull << 30));
  return b;
}

CudaBackend::CudaBackend(const CudaOptions& options) : opt_(options), fuse_norm_(options.gemv && options.fuse_norm) {
  // The kernels' own switches, handed down before anything is launched.
  cuda::set_kernel_switches({opt_.pdl, opt_.clusters, opt_.gemv_rotate, opt_.gemv_unroll});
  cuda_check(cudaSetDevice(opt_.device), "cudaSetDevice");
  cuda_check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  cuda_check(cudaEventCreateWithFlags(&plan_sent_, cudaEventDisableTiming), "cudaEventCreate");
  cuda_check(cudaEventCreateWithFlags(&ids_ready_, cudaEventDisableTiming), "cudaEventCreate");
  cuda_check(cuda::gemm_context_create(&gemm_), "cuBLASLt initialisation");
  cuda::gemm_set_fp8_group_scales(gemm_, opt_.fp8_groups);
  if (opt_.profile) {
    cuda_check(cudaEventCreate(&prof_begin_), "cudaEventCreate");
    cuda_check(cudaEventCreate(&prof_end_), "cudaEventCreate");
  }
}

CudaBackend::~CudaBackend() {
  cudaStreamSynchronize(stream_);
  if (opt_.profile) {
    if (!prof_ms_.empty()) {  // median: graph captures make a few steps much longer
      std::sort(prof_ms_.begin(), prof_ms_.end());
      std::fprintf(stderr, "cuda: %zu greedy steps, GPU time per step median %.3f ms (plan upload to ids on the host)\n",
                   prof_ms_.size(), double(prof_ms_[prof_ms_.size() / 2]));
    }
    cudaEventDestroy(prof_begin_);
    cudaEventDestroy(prof_end_);
  }
  drop_graphs();
  for (auto& [p, n] : owned_) cudaFree(p);
  for (Grow* g : {&d_plan_, &d_ws_, &d_rows_, &d_argmax_ws_, &d_wts_, &d_act_}) cudaFree(g->p);
  cudaFreeHost(h_plan_.p);
  cudaFreeHost(h_ids_.p);
  cuda::gemm_context_destroy(gemm_);
  cudaEventDestroy(plan_sent_);
  cudaEventDestroy(ids_ready_);
  cudaStreamDestroy(stream_);
}

std::string CudaBackend::device_model() const {
  cudaDeviceProp prop{};
  return cudaGetDeviceProperties(&prop, opt_.device) == cudaSuccess ? std::string(prop.name) : std::string();
}

int64_t CudaBackend::default_kv_budget() const {
  size_t free = 0, total = 0;
  cuda_check(cudaMemGetInfo(&free, &total), "cudaMemGetInfo");
  // Activations and cuBLASLt's workspace grow with the batch: keep 1.5 GiB for them.
  const int64_t budget =
      int64_t(double(total) * opt_.gpu_memory_utilization) - int64_t(total - free) - (int64_t(3) << 29);
  return std::max<int64_t>(budget, 0);
}

void* CudaBackend::alloc(size_t bytes) {
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, bytes);
  if (e != cudaSuccess) {
    cudaGetLastError();
    size_t free = 0, total = 0;
    cudaMemGetInfo(&free, &total);
    throw Error("out of GPU memory on " + name() + ": " + gib(bytes) + " requested, " + gib(free) + " free of " +
                gib(total));
  }
  return p;
}

void CudaBackend::release(void* p, size_t) {
  cudaStreamSynchronize(stream_);
  drop_graphs();  // a captured graph may point into this memory
  cudaFree(p);
}

void CudaBackend::copy(void* dst, const void* src, size_t bytes) {
  cuda_check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_), "copy");
}

void CudaBackend::download(void* host, const void* src, size_t bytes) {
  cuda_check(cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, stream_), "download");
  cuda_check(cudaStreamSynchronize(stream_), "download");
}

// The host KV tier: pinned memory, so that cudaMemcpyAsync runs as a DMA on the stream, in order
// with the forwards around it, while the host goes on.
void* CudaBackend::alloc_host(size_t bytes) {
  void* p = nullptr;
  if (cudaMallocHost(&p, bytes ? bytes : 1) != cudaSuccess) {
    cudaGetLastError();
    throw Error("cannot pin " + gib(bytes) + " of host memory for the KV host tier (--host-kv-cache)");
  }
  return p;
}

void CudaBackend::release_host(void* p, size_t) {
  if (!p) return;
  cudaStreamSynchronize(stream_);  // a copy in flight may still read or write it
  cudaFreeHost(p);
}

void CudaBackend::copy_to_host_async(void* host_dst, const void* src, size_t bytes) {
  cuda_check(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, stream_), "copy_to_host_async");
}

void CudaBackend::copy_from_host_async(void* dst, const void* host_src, size_t bytes) {
  cuda_check(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, stream_), "copy_from_host_async");
}

// ---- ops -------------------------------------------------------------------------------------

void CudaBackend::embedding(const ModelWeights& w, Act out) {
  cuda::EmbeddingParams p{d_ids_, out.rows, embed_, embed_dtype_, cfg_.vocab_size, out.cols, out.data, out.dtype,
                          out.ld};
  cuda_check(cuda::embedding(p, stream_), "embedding");
}

void CudaBackend::rmsnorm(Act in, const std::vector<float>& w, float eps, Act out) {
  cuda::RMSNormParams p{};
  p.x = nullptr;
  p.residual = in.data;
  p.residual_dtype = in.dtype;
  p.ldr = in.ld;
  p.weight = vec(w);
  p.eps = eps;
  p.out = out.data;
  p.out_dtype = out.dtype;
  p.ldo = out.ld;
  p.n = in.rows;
  p.d = in.cols;
  cuda_check(cuda::rmsnorm_residual(p, stream_), "rmsnorm");
}

void CudaBackend::head_rmsnorm(Act x, int64_t n_heads, const std::vector<float>& w, float eps) {
  cuda::HeadRMSNormParams p{x.data, x.ld, x.dtype, vec(w), eps, x.rows, n_heads, x.cols / n_heads};
  cuda_check(cuda::head_rmsnorm(p, stream_), "head_rmsnorm");
}

void CudaBackend::linear(const Linear& l, Act in, Act out, bool accumulate) {
  GALE_ASSERT(in.cols == l.in && out.cols == l.out && in.rows == out.rows && in.dtype == DType::BF16);
  auto it = wmap_.find(l.w);
  GALE_ASSERT(it != wmap_.end());
  gemm(it->second, l.out, in, out, accumulate);
  if (!l.bias.empty()) bias(vec(l.bias), out);
}

void CudaBackend::linear_fused(std::span<const Linear* const> ls, Act in, Act out) {
  const Fused* f = fused_for(ls);
  if (!f) {  // not fused at load: one GEMM each
    int64_t c0 = 0;
    for (const Linear* l : ls) {
      linear(*l, in, out.cols_range(c0, l->out), false);
      c0 += l->out;
    }
    return;
  }
  GALE_ASSERT(out.cols == f->n);
  gemm(*f, f->n, in, out, false);
  if (f->bias) bias(f->bias, out);
}

// Decode-sized steps: the norm runs inside the GEMV (each block normalizes the rows itself).
void CudaBackend::rmsnorm_linear(Act x, const std::vector<float>& norm_w, float eps, Act normed,
                                 std::span<const Linear* const> ls, Act out) {
  const Fused* f = fused_for(ls);
  const DevMatrix* m = f ? f : ls.size() == 1 ? &wmap_.at(ls[0]->w) : nullptr;
  if (fuse_norm_ && m && x.dtype == DType::F32 && m->integer()) {
    const cuda::IntGemmParams p = int_params(*m, x, out, false);
    const cuda::GemvFusion in{cuda::GemvFusion::kRMSNorm, vec(norm_w), eps};
    if (!m->perm && out.cols == m->im.N && cuda::gemv_int_fusable(p, in)) {
      cuda_check(cuda::gemv_int(p, stream_, in), "RMSNorm + integer GEMV");
      if (const float* b = f ? f->bias : ls[0]->bias.empty() ? nullptr : vec(ls[0]->bias)) bias(b, out);
      return;
    }
  } else if (fuse_norm_ && m && x.dtype == DType::F32) {
    const int64_t n = f ? f->n : ls[0]->out;
    const cuda::GemmParams p = gemm_params(*m, n, x, out, false);
    const cuda::GemvFusion in{cuda::GemvFusion::kRMSNorm, vec(norm_w), eps};
    if (out.cols == n && cuda::gemv_bf16_fusable(p, in)) {
      cuda_check(cuda::gemv_bf16(p, stream_, in), "RMSNorm + GEMV");
      if (const float* b = f ? f->bias : ls[0]->bias.empty() ? nullptr : vec(ls[0]->bias)) bias(b, out);
      return;
    }
  }
  Backend::rmsnorm_linear(x, norm_w, eps, normed, ls, out);
}

void CudaBackend::swiglu_mlp(Act x, const std::vector<float>& norm_w, float eps, Act normed, Act gate_up,
                             const Linear& gate, const Linear& up, const Linear& down, Act out) {
  auto it = fused_.find(gate.w);
  if (it == fused_.end() || !it->second.interleaved4)
    return Backend::swiglu_mlp(x, norm_w, eps, normed, gate_up, gate, up, down, out);
  const Fused& f = it->second;
  const int64_t I = gate.out, rows = x.rows;
  GALE_ASSERT(gate_up.cols == 2 * I && f.n == 2 * I && d_act_.bytes >= size_t(rows * I) * 2);
  Act act{d_act_.p, DType::BF16, rows, I, I};
  const cuda::GemmParams p = gemm_params(f, 2 * I, x, act, false);
  const cuda::IntGemmParams pi = int_params(f, x, act, false);
  cuda::GemvFusion in{cuda::GemvFusion::kRMSNorm, vec(norm_w), eps};
  in.swiglu = true;
  if (f.integer() && !f.perm && x.dtype == DType::F32 && fuse_norm_ && cuda::gemv_int_fusable(pi, in)) {
    cuda_check(cuda::gemv_int(pi, stream_, in), "RMSNorm + integer gate|up GEMV + SiLU-mul");
  } else if (!f.integer() && x.dtype == DType::F32 && fuse_norm_ && cuda::gemv_bf16_fusable(p, in)) {
    cuda_check(cuda::gemv_bf16(p, stream_, in), "RMSNorm + gate|up GEMV + SiLU-mul");
  } else {  // the interleaved gate|up product, then SiLU-mul over its groups of four
    const Linear* proj[] = {&gate, &up};
    Backend::rmsnorm_linear(x, norm_w, eps, normed, proj, gate_up);
    cuda::SiluMulParams sp{gate_up.data, gate_up.ld, nullptr, 0, gate_up.dtype, act.data, act.ld, act.dtype, rows, I};
    sp.group = 4;
    cuda_check(cuda::silu_mul(sp, stream_), "silu_mul");
  }
  linear(down, act, out, /*accumulate=*/true);
}

void CudaBackend::rope(Act q, int64_t n_q_heads, Act k, int64_t n_k_heads, int64_t head_dim) {
  GALE_ASSERT(q.dtype == k.dtype);
  cuda::RopeParams p{q.data, q.ld, n_q_heads, k.data, k.ld, n_k_heads, q.dtype, q.rows, head_dim, rot_dim_,
                     d_cos_, d_sin_};
  cuda_check(cuda::rope_apply(p, stream_), "rope");
}

void CudaBackend::silu_mul(Act gate, Act up) {
  cuda::SiluMulParams p{gate.data, gate.ld, up.data, up.ld, gate.dtype, gate.data, gate.ld, gate.dtype, gate.rows,
                        gate.cols};
  cuda_check(cuda::silu_mul(p, stream_), "silu_mul");
}

void CudaBackend::gather_rows(Act src, std::span<const int32_t> rows, Act dst) {
  int32_t* d = upload_rows(rows);
  gather(src, d, dst);
}

void CudaBackend::scatter_add_rows(Act src, std::span<const int32_t> rows, std::span<const float> weight, Act dst) {
  int32_t* d = upload_rows(rows);
  grow_device(d_wts_, weight.size_bytes());
  cuda_check(cudaMemcpyAsync(d_wts_.p, weight.data(), weight.size_bytes(), cudaMemcpyHostToDevice, stream_), "upload");
  cuda::ScatterAddRowsParams p{src.data, src.ld, src.dtype, d, static_cast<const float*>(d_wts_.p), dst.f32(),
                               dst.ld, src.rows, src.cols};
  cuda_check(cuda::scatter_add_rows(p, stream_), "scatter_add_rows");
}

void CudaBackend::to_host(Act src, float* dst) {
  GALE_ASSERT(src.dtype == DType::F32);
  cuda_check(cudaMemcpy2DAsync(dst, size_t(src.cols) * 4, src.data, size_t(src.ld) * 4, size_t(src.cols) * 4,
                          size_t(src.rows), cudaMemcpyDeviceToHost, stream_),
        "copy to host");
  cuda_check(cudaStreamSynchronize(stream_), "forward pass");
}

// The ids go to pinned memory (a copy into pageable memory would block the host until the
// step is done); wait_ids() waits on the event recorded after the copy.
void CudaBackend::launch_argmax_rows(Act logits) {
  grow_device(d_rows_, size_t(logits.rows) * 4);
  const size_t ws = cuda::argmax_workspace_size(logits.rows);
  if (ws > d_argmax_ws_.bytes) {  // the kernel leaves its workspace zeroed: zero it once here
    grow_device(d_argmax_ws_, ws);
    cuda_check(cudaMemsetAsync(d_argmax_ws_.p, 0, d_argmax_ws_.bytes, stream_), "argmax workspace");
  }
  int32_t* h = launch_ids(logits.rows);
  cuda::ArgmaxParams p{logits.data, logits.dtype,     logits.ld, logits.rows, logits.cols,
                       static_cast<int32_t*>(d_rows_.p), d_argmax_ws_.p};
  cuda_check(cuda::argmax(p, stream_), "argmax");
  cuda_check(cudaMemcpyAsync(h, d_rows_.p, size_t(logits.rows) * 4, cudaMemcpyDeviceToHost, stream_), "copy to host");
  if (opt_.profile) cuda_check(cudaEventRecord(prof_end_, stream_), "profile");
  cuda_check(cudaEventRecord(ids_ready_, stream_), "step");
  launched_ids_ = logits.rows;
  launched_argmax_ = true;
}

void CudaBackend::launch_sample_rows(Act logits, std::span<const RowSampling> rows) {
  int32_t* h = launch_ids(logits.rows);
  sampling_.launch(logits, rows, h, stream_);
  cuda_check(cudaEventRecord(ids_ready_, stream_), "step");
  launched_ids_ = logits.rows;
  launched_argmax_ = false;
}

void CudaBackend::wait_ids(int32_t* out) {
  GALE_ASSERT(launched_ids_ >= 0);
  const int64_t n = launched_ids_;
  launched_ids_ = -1;
  cuda_check(cudaEventSynchronize(ids_ready_), "forward pass");
  std::memcpy(out, h_ids_.p, size_t(n) * 4);
  if (launched_argmax_) profile_step_done();
}

// The expert half of an MoE layer without the host: routing (top-k, counts, offsets,
// permutation), the gate|up grouped GEMM reading xn through the permutation, SiLU-mul, the down
// grouped GEMM, and the weighted combine into x in a fixed order per token.
void CudaBackend::moe_experts(const ModelConfig& c, const LayerWeights& L, Act xn, Act router, void* workspace,
                              Act x) {
  if (!moe_kernels_) return Backend::moe_experts(c, L, xn, router, workspace, x);
  GALE_ASSERT(xn.dtype == DType::BF16 && router.dtype == DType::F32 && x.dtype == DType::F32);
  const int64_t T = xn.rows, E = c.num_experts, K = c.num_experts_per_tok, R = T * K;
  const int64_t H = c.hidden_size, I = c.intermediate_size;
  const MoeLayer& ml = moe_layers_.at(L.router.w);
  const MoeScratch ws(c, T, workspace);
  cuda::MoeRouteParams rp{router.f32(), router.ld, T, E, K, c.norm_topk_prob, ws.ids, ws.w, ws.offsets, ws.slot_of,
                          ws.perm_rows};
  cuda_check(cuda::moe_route(rp, stream_), "moe_route");
  // Expected rows per expert picks the GEMM's tile shape (the real counts stay on the device).
  const int64_t hint = std::max<int64_t>(1, (R + E - 1) / E);
  cuda::GroupedGemmParams gu{xn.data, xn.ld, ws.perm_rows, ml.gate_up, H, ws.offsets, ws.gate_up, 2 * I, E, R,
                             2 * I, H, hint};
  cuda_check(cuda::moe_grouped_gemm(gu, stream_), "MoE gate|up grouped GEMM");
  uint16_t* g = static_cast<uint16_t*>(ws.gate_up);
  uint16_t* a = static_cast<uint16_t*>(ws.act);
  for (int64_t r0 = 0; r0 < R; r0 += 65535) {  // silu_mul takes at most 65535 rows a launch
    const int64_t n = std::min<int64_t>(65535, R - r0);
    cuda::SiluMulParams sp{g + r0 * 2 * I, 2 * I, g + r0 * 2 * I + I, 2 * I, DType::BF16, a + r0 * I, I, DType::BF16,
                           n, I};
    cuda_check(cuda::silu_mul(sp, stream_), "MoE silu_mul");
  }
  cuda::GroupedGemmParams dn{ws.act, I, nullptr, ml.down, I, ws.offsets, ws.gate_up, H, E, R, H, I, hint};
  cuda_check(cuda::moe_grouped_gemm(dn, stream_), "MoE down grouped GEMM");
  cuda::MoeCombineParams cp{ws.gate_up, H, DType::BF16, ws.ids, ws.w, ws.slot_of, x.f32(), x.ld, T, K, H};
  cuda_check(cuda::moe_combine(cp, stream_), "moe_combine");
}

cuda::KVCacheWriteParams CudaBackend::cache_write_params(const KVLayer& kv, Act k, Act v) const {
  GALE_ASSERT(supports_kv(kv.dtype) && k.dtype == DType::BF16 && v.dtype == DType::BF16);
  return {k.data, k.ld, v.data,      v.ld,     k.dtype,    kv.k, kv.v, kv.dtype, d_slots_, n_tokens_,
          kv.n_kv_heads * kv.head_dim, kv.k_scale, kv.v_scale};
}

void CudaBackend::attention(const KVLayer& kv, Act q, Act k, Act v, int64_t n_heads, int64_t window, float scale,
                            Act out) {
  cuda_check(cuda::kv_cache_write(cache_write_params(kv, k, v), stream_), "kv_cache_write");
  attend(kv, q, n_heads, window, scale, out);
}

// Decode steps (M <= 4): RMSNorm, the q|k|v GEMV, RoPE and the K/V write in one kernel.
bool CudaBackend::rmsnorm_qkv_rope_cache(Act x, const std::vector<float>& norm_w, float eps,
                                         std::span<const Linear* const> qkv, Act out, const KVLayer& kv) {
  if (!opt_.fuse_qkv || !fuse_norm_ || qkv.size() != 3 || rot_dim_ != kv.head_dim || x.dtype != DType::F32 ||
      out.dtype != DType::BF16 || kv.dtype != DType::BF16)
    return false;
  const Fused* f = fused_for(qkv);
  if (!f || f->bias || f->interleaved4 || f->perm) return false;
  const cuda::GemmParams p = gemm_params(*f, f->n, x, out, false);
  cuda::GemvFusion in{cuda::GemvFusion::kRMSNorm, vec(norm_w), eps};
  in.rope = true;
  in.rk = {d_cos_, d_sin_, qkv[0]->out, qkv[1]->out, kv.head_dim, kv.k, kv.v, d_slots_};
  if (f->integer()) {
    const cuda::IntGemmParams pi = int_params(*f, x, out, false);
    if (out.cols != f->n || qkv[1]->out != kv.n_kv_heads * kv.head_dim || !cuda::gemv_int_fusable(pi, in)) return false;
    cuda_check(cuda::gemv_int(pi, stream_, in), "RMSNorm + integer q|k|v GEMV + RoPE + K/V write");
    return true;
  }
  if (out.cols != f->n || qkv[1]->out != kv.n_kv_heads * kv.head_dim || !cuda::gemv_bf16_fusable(p, in)) return false;
  cuda_check(cuda::gemv_bf16(p, stream_, in), "RMSNorm + q|k|v GEMV + RoPE + K/V write");
  return true;
}

void CudaBackend::rope_attention(const KVLayer& kv, Act q, Act k, Act v, int64_t n_heads, int64_t window, float scale,
                                 Act out) {
  if (!opt_.fuse_rope || rot_dim_ <= 0) return Backend::rope_attention(kv, q, k, v, n_heads, window, scale, out);
  GALE_ASSERT(q.dtype == k.dtype);
  const cuda::RopeParams r{q.data, q.ld, n_heads, k.data, k.ld, kv.n_kv_heads, q.dtype, q.rows, kv.head_dim, rot_dim_,
                           d_cos_, d_sin_};
  cuda_check(cuda::rope_kv_write({r, cache_write_params(kv, k, v)}, stream_), "rope + kv_cache_write");
  attend(kv, q, n_heads, window, scale, out);
}

// Attention of the step's queries over the cache (K/V of this step already written).
void CudaBackend::attend(const KVLayer& kv, Act q, int64_t n_heads, int64_t window, float scale, Act out) {
  GALE_ASSERT(supports_kv(kv.dtype) && q.dtype == DType::BF16);
  const int64_t D = n_lead_decode_;
  if (D > 0) {
    cuda::DecodeAttentionParams p =
        decode_attention_shape(D, n_heads, kv.n_kv_heads, kv.head_dim, max_seq_len_, kv.block_size, window);
    p.q = q.data;
    p.q_dtype = q.dtype;
    p.ldq = q.ld;
    p.k_cache = kv.k;
    p.v_cache = kv.v;
    p.kv_dtype = kv.dtype;
    p.k_scale = kv.k_scale;
    p.v_scale = kv.v_scale;
    p.block_tables = d_tables_;
    p.max_blocks_per_seq = max_blocks_;
    p.seq_lens = d_seq_lens_;
    p.scale = scale;
    p.out = out.data;
    p.out_dtype = out.dtype;
    p.ldo = out.ld;
    const size_t ws = cuda::decode_attention_workspace_size(p);
    GALE_ASSERT(ws <= d_ws_.bytes);  // sized by begin_step
    p.workspace = ws ? d_ws_.p : nullptr;
    cuda_check(cuda::decode_attention(p, stream_), "decode_attention");
  }
  if (D >= n_seqs_) return;
  // The rest (prefill chunks, and any one-token sequence after them): varlen prefill kernel.
  cuda::PrefillAttentionParams p{};
  p.q = q.data;
  p.ldq = q.ld;
  p.k_cache = kv.k;
  p.v_cache = kv.v;
  p.kv_dtype = kv.dtype;
  p.k_scale = kv.k_scale;
  p.v_scale = kv.v_scale;
  p.block_tables = d_tables_ + D * max_blocks_;
  p.max_blocks_per_seq = max_blocks_;
  p.cu_seqlens_q = d_cu_q_ + D;  // absolute row offsets: no shift of q or out
  p.start_pos = d_start_ + D;
  p.max_q_len = max_q_len_;
  p.n_seqs = n_seqs_ - D;
  p.n_heads = n_heads;
  p.n_kv_heads = kv.n_kv_heads;
  p.head_dim = kv.head_dim;
  p.block_size = kv.block_size;
  p.window = window;
  p.scale = scale;
  p.out = out.data;
  p.out_dtype = out.dtype;
  p.ldo = out.ld;
  cuda_check(cuda::prefill_attention(p, stream_), "prefill_attention");
}

// ---- ceilings --------------------------------------------------------------------------------

bool CudaBackend::probe(double* bandwidth_gbs, double* peak_gflops) {
  cudaEvent_t t0, t1;
  cuda_check(cudaEventCreate(&t0), "cudaEventCreate");
  cuda_check(cudaEventCreate(&t1), "cudaEventCreate");
  auto timed = [&](int reps, auto&& fn) {
    fn();  // warm-up
    cuda_check(cudaEventRecord(t0, stream_), "probe");
    for (int i = 0; i < reps; ++i) fn();
    cuda_check(cudaEventRecord(t1, stream_), "probe");
    cuda_check(cudaEventSynchronize(t1), "probe");
    float ms = 0;
    cudaEventElapsedTime(&ms, t0, t1);
    return double(ms) / 1e3 / reps;
  };
  // Copy bandwidth: 1 GiB device to device, counting bytes read plus bytes written.
  const size_t n = size_t(1) << 30;
  void* a = alloc(n);
  void* b = alloc(n);
  cuda_check(cudaMemsetAsync(a, 0x5a, n, stream_), "probe");
  const double copy_s = timed(5, [&] { cuda_check(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice, stream_), "probe"); });
  *bandwidth_gbs = 2.0 * double(n) / copy_s / 1e9;
  // bf16 GEMM rate: 8192^3 on random data (zeros would run faster than real data).
  const int64_t d = 8192;
  std::vector<uint16_t> h(size_t(d * d));
  uint64_t st = 0x9e3779b97f4a7c15ull;
  for (auto& v : h) {
    st = st * 6364136223846793005ull + 1442695040888963407ull;
    v = f32_to_bf16(float(int64_t(st >> 40) - (int64_t(1) << 23)) / float(1 << 23));
  }
  cuda_check(cudaMemcpy(a, h.data(), h.size() * 2, cudaMemcpyHostToDevice), "probe");
  cuda_check(cudaMemcpy(b, h.data(), h.size() * 2, cudaMemcpyHostToDevice), "probe");
  void* y = alloc(size_t(d * d) * 2);
  Act x{a, DType::BF16, d, d, d}, out{y, DType::BF16, d, d, d};
  const double gemm_s = timed(10, [&] { gemm(DevMatrix{b}, d, x, out, false); });
  *peak_gflops = 2.0 * double(d) * double(d) * double(d) / gemm_s / 1e9;
  release(a, n);
  release(b, n);
  release(y, size_t(d * d) * 2);
  cudaEventDestroy(t0);
  cudaEventDestroy(t1);
  return true;
}

std::unique_ptr<Backend> make_cuda_backend(const CudaOptions& options) {
  return std::make_unique<CudaBackend>(options);
}

}  // namespace gale
