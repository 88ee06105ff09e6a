// The CUDA backend: one GPU, one stream. Weights are uploaded once as bf16 (q|k|v and gate|up
// concatenated so each is one GEMM), activations are bf16 with an f32 residual stream, the KV
// cache is bf16. GEMMs go through cuBLASLt; everything else is a kernel of kernels/cuda.
// Per step, the host packs the whole plan (ids, rotary tables, slots, block tables, lengths,
// logit rows) into one pinned buffer and sends it with one copy.
#include "model/cuda/cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <tuple>
#include <cstring>
#include <unordered_map>

#include "core/error.h"
#include "core/thread_pool.h"
#include "kernels/cuda/argmax.cuh"
#include "kernels/cuda/bias_add.cuh"
#include "kernels/cuda/decode_attention.cuh"
#include "kernels/cuda/embedding.cuh"
#include "kernels/cuda/gather_rows.cuh"
#include "kernels/cuda/gemm_lt.cuh"
#include "kernels/cuda/gemv_bf16.cuh"
#include "kernels/cuda/head_rmsnorm.cuh"
#include "kernels/cuda/kv_cache_write.cuh"
#include "kernels/cuda/moe_grouped_gemm.cuh"
#include "kernels/cuda/moe_route.cuh"
#include "kernels/cuda/prefill_attention.cuh"
#include "kernels/cuda/rmsnorm_residual.cuh"
#include "kernels/cuda/rope.cuh"
#include "kernels/cuda/rope_kv_write.cuh"
#include "kernels/cuda/scatter_add_rows.cuh"
#include "kernels/cuda/silu_mul.cuh"
#include "model/backend.h"
#include "model/cuda/cuda_buffers.h"
#include "model/cuda/cuda_sampling.h"

namespace gale {

namespace {

std::string gib(size_t bytes) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2f GiB", double(bytes) / double(1ull << 30));
  return b;
}

}  // namespace

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device, double util) : dev_(device), util_(util) {
    cuda_check(cudaSetDevice(dev_), "cudaSetDevice");
    cuda_check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    cuda_check(cudaEventCreateWithFlags(&plan_sent_, cudaEventDisableTiming), "cudaEventCreate");
    cuda_check(cudaEventCreateWithFlags(&ids_ready_, cudaEventDisableTiming), "cudaEventCreate");
    cuda_check(cuda::gemm_context_create(&gemm_), "cuBLASLt initialisation");
    if (profile_) {
      cuda_check(cudaEventCreate(&prof_begin_), "cudaEventCreate");
      cuda_check(cudaEventCreate(&prof_end_), "cudaEventCreate");
    }
  }
  ~CudaBackend() override {
    cudaStreamSynchronize(stream_);
    if (profile_) {
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

  std::string name() const override { return "cuda:" + std::to_string(dev_); }
  std::string device_model() const override {
    cudaDeviceProp prop{};
    return cudaGetDeviceProperties(&prop, dev_) == cudaSuccess ? std::string(prop.name) : std::string();
  }
  bool is_cpu() const override { return false; }
  DType act_dtype() const override { return DType::BF16; }
  DType kv_dtype() const override { return DType::BF16; }

  int64_t default_kv_budget() const override {
    size_t free = 0, total = 0;
    cuda_check(cudaMemGetInfo(&free, &total), "cudaMemGetInfo");
    // Activations and cuBLASLt's workspace grow with the batch: keep 1.5 GiB for them.
    const int64_t budget = int64_t(double(total) * util_) - int64_t(total - free) - (int64_t(3) << 29);
    return std::max<int64_t>(budget, 0);
  }

  bool probe(double* bandwidth_gbs, double* peak_gflops) override;

  void* alloc(size_t bytes) override {
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
  void release(void* p, size_t) override {
    cudaStreamSynchronize(stream_);
    drop_graphs();  // a captured graph may point into this memory
    cudaFree(p);
  }
  void copy(void* dst, const void* src, size_t bytes) override {
    cuda_check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_), "copy");
  }

  void prepare(const ModelConfig& cfg, const ModelWeights& w) override;
  int64_t padded_tokens(const StepPlan& plan) const override;
  void begin_step(const StepPlan& plan) override;
  bool replay_step() override;
  void end_step_ops() override;

  void embedding(const ModelWeights& w, Act out) override {
    cuda::EmbeddingParams p{d_ids_, out.rows, embed_, embed_dtype_, cfg_.vocab_size, out.cols, out.data, out.dtype,
                            out.ld};
    cuda_check(cuda::embedding(p, stream_), "embedding");
  }

  void rmsnorm(Act in, const std::vector<float>& w, float eps, Act out) override {
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

  void head_rmsnorm(Act x, int64_t n_heads, const std::vector<float>& w, float eps) override {
    cuda::HeadRMSNormParams p{x.data, x.ld, x.dtype, vec(w), eps, x.rows, n_heads, x.cols / n_heads};
    cuda_check(cuda::head_rmsnorm(p, stream_), "head_rmsnorm");
  }

  void linear(const Linear& l, Act in, Act out, bool accumulate) override {
    GALE_ASSERT(in.cols == l.in && out.cols == l.out && in.rows == out.rows && in.dtype == DType::BF16);
    auto it = wmap_.find(l.w);
    GALE_ASSERT(it != wmap_.end());
    gemm(it->second, l.out, in, out, accumulate);
    if (!l.bias.empty()) bias(vec(l.bias), out);
  }

  void linear_fused(std::span<const Linear* const> ls, Act in, Act out) override {
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
    gemm(f->w, f->n, in, out, false);
    if (f->bias) bias(f->bias, out);
  }

  // Decode-sized steps: the norm runs inside the GEMV (each block normalizes the rows itself).
  void rmsnorm_linear(Act x, const std::vector<float>& norm_w, float eps, Act normed, std::span<const Linear* const> ls,
                      Act out) override {
    const Fused* f = fused_for(ls);
    const void* w = f ? f->w : ls.size() == 1 ? wmap_.at(ls[0]->w) : nullptr;
    if (fuse_norm_ && w && x.dtype == DType::F32) {
      const int64_t n = f ? f->n : ls[0]->out;
      cuda::GemmParams p{x.data, x.ld, w, x.cols, out.data, out.ld, out.dtype, x.rows, n, x.cols, false};
      const cuda::GemvFusion in{cuda::GemvFusion::kRMSNorm, vec(norm_w), eps};
      if (out.cols == n && cuda::gemv_bf16_fusable(p, in)) {
        cuda_check(cuda::gemv_bf16(p, stream_, in), "RMSNorm + GEMV");
        if (const float* b = f ? f->bias : ls[0]->bias.empty() ? nullptr : vec(ls[0]->bias)) bias(b, out);
        return;
      }
    }
    Backend::rmsnorm_linear(x, norm_w, eps, normed, ls, out);
  }

  void swiglu_mlp(Act x, const std::vector<float>& norm_w, float eps, Act normed, Act gate_up, const Linear& gate,
                  const Linear& up, const Linear& down, Act out) override {
    auto it = fused_.find(gate.w);
    if (it == fused_.end() || !it->second.interleaved4) return Backend::swiglu_mlp(x, norm_w, eps, normed, gate_up, gate, up, down, out);
    const Fused& f = it->second;
    const int64_t I = gate.out, rows = x.rows;
    GALE_ASSERT(gate_up.cols == 2 * I && f.n == 2 * I && d_act_.bytes >= size_t(rows * I) * 2);
    Act act{d_act_.p, DType::BF16, rows, I, I};
    cuda::GemmParams p{x.data, x.ld, f.w, x.cols, act.data, act.ld, DType::BF16, rows, 2 * I, x.cols, false};
    cuda::GemvFusion in{cuda::GemvFusion::kRMSNorm, vec(norm_w), eps};
    in.swiglu = true;
    if (x.dtype == DType::F32 && fuse_norm_ && cuda::gemv_bf16_fusable(p, in)) {
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

  void rope(Act q, int64_t n_q_heads, Act k, int64_t n_k_heads, int64_t head_dim) override {
    GALE_ASSERT(q.dtype == k.dtype);
    cuda::RopeParams p{q.data, q.ld, n_q_heads, k.data, k.ld, n_k_heads, q.dtype, q.rows, head_dim, rot_dim_,
                       d_cos_, d_sin_};
    cuda_check(cuda::rope_apply(p, stream_), "rope");
  }

  void attention(const KVLayer& kv, Act q, Act k, Act v, int64_t n_heads, int64_t window, float scale,
                 Act out) override;
  bool rmsnorm_qkv_rope_cache(Act x, const std::vector<float>& norm_w, float eps, std::span<const Linear* const> qkv,
                              Act out, const KVLayer& kv) override;
  void attend_cached(const KVLayer& kv, Act q, int64_t n_heads, int64_t window, float scale, Act out) override {
    attend(kv, q, n_heads, window, scale, out);
  }
  void rope_attention(const KVLayer& kv, Act q, Act k, Act v, int64_t n_heads, int64_t window, float scale,
                      Act out) override;

  void silu_mul(Act gate, Act up) override {
    cuda::SiluMulParams p{gate.data, gate.ld, up.data, up.ld, gate.dtype, gate.data, gate.ld, gate.dtype, gate.rows,
                          gate.cols};
    cuda_check(cuda::silu_mul(p, stream_), "silu_mul");
  }

  void gather_rows(Act src, std::span<const int32_t> rows, Act dst) override {
    int32_t* d = upload_rows(rows);
    gather(src, d, dst);
  }
  void gather_logit_rows(Act src, Act dst) override { gather(src, d_logit_rows_, dst); }

  void scatter_add_rows(Act src, std::span<const int32_t> rows, std::span<const float> weight, Act dst) override {
    int32_t* d = upload_rows(rows);
    grow_device(d_wts_, weight.size_bytes());
    cuda_check(cudaMemcpyAsync(d_wts_.p, weight.data(), weight.size_bytes(), cudaMemcpyHostToDevice, stream_), "upload");
    cuda::ScatterAddRowsParams p{src.data, src.ld, src.dtype, d, static_cast<const float*>(d_wts_.p), dst.f32(),
                                 dst.ld, src.rows, src.cols};
    cuda_check(cuda::scatter_add_rows(p, stream_), "scatter_add_rows");
  }

  size_t moe_workspace_bytes(const ModelConfig& c, int64_t T) const override {
    return moe_kernels_ ? MoeScratch(c, T, nullptr).bytes : Backend::moe_workspace_bytes(c, T);
  }
  void moe_experts(const ModelConfig& c, const LayerWeights& L, Act xn, Act router, void* workspace, Act x) override;

  void to_host(Act src, float* dst) override {
    GALE_ASSERT(src.dtype == DType::F32);
    cuda_check(cudaMemcpy2DAsync(dst, size_t(src.cols) * 4, src.data, size_t(src.ld) * 4, size_t(src.cols) * 4,
                            size_t(src.rows), cudaMemcpyDeviceToHost, stream_),
          "copy to host");
    cuda_check(cudaStreamSynchronize(stream_), "forward pass");
  }

  void argmax_rows(Act logits, int32_t* out) override {
    launch_argmax_rows(logits);
    wait_ids(out);
  }
  // The ids go to pinned memory (a copy into pageable memory would block the host until the
  // step is done); wait_ids() waits on the event recorded after the copy.
  void launch_argmax_rows(Act logits) override {
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
    if (profile_) cuda_check(cudaEventRecord(prof_end_, stream_), "profile");
    cuda_check(cudaEventRecord(ids_ready_, stream_), "step");
    launched_ids_ = logits.rows;
    launched_argmax_ = true;
  }

  // Sampling where the logits are (model/cuda/cuda_sampling.cpp over kernels/cuda/sample.cu):
  // penalties, temperature, top-k / top-p / min-p and the draw; only the ids come back.
  bool has_sample_rows() const override { return true; }
  void sample_rows(Act logits, std::span<const RowSampling> rows, int32_t* out) override {
    launch_sample_rows(logits, rows);
    wait_ids(out);
  }
  void launch_sample_rows(Act logits, std::span<const RowSampling> rows) override {
    int32_t* h = launch_ids(logits.rows);
    sampling_.launch(logits, rows, h, stream_);
    cuda_check(cudaEventRecord(ids_ready_, stream_), "step");
    launched_ids_ = logits.rows;
    launched_argmax_ = false;
  }

  void wait_ids(int32_t* out) override {
    GALE_ASSERT(launched_ids_ >= 0);
    const int64_t n = launched_ids_;
    launched_ids_ = -1;
    cuda_check(cudaEventSynchronize(ids_ready_), "forward pass");
    std::memcpy(out, h_ids_.p, size_t(n) * 4);
    if (launched_argmax_) profile_step_done();
  }

 private:
  CudaSampling sampling_;  // the sampling kernel's pinned and device buffers
  cuda::KVCacheWriteParams cache_write_params(const KVLayer& kv, Act k, Act v) const;
  void attend(const KVLayer& kv, Act q, int64_t n_heads, int64_t window, float scale, Act out);

  using Grow = GrowBuffer;
  struct Fused {
    void* w = nullptr;  // [n, in] bf16: the projections' rows one after the other
    int64_t n = 0;
    size_t count = 0;
    const float* bias = nullptr;  // [n] or nullptr
    // A dense MLP's gate|up with rows interleaved in groups of four (GemvFusion::swiglu's
    // layout): its products come out interleaved, and only swiglu_mlp reads them.
    bool interleaved4 = false;
  };

  // The MoE path on the device (moe_experts): the pieces of its workspace for T rows (256-byte
  // aligned, R = T * top_k slots). The down product's output reuses the gate|up rows (dead by then).
  struct MoeScratch {
    int32_t *ids = nullptr, *offsets = nullptr, *slot_of = nullptr, *perm_rows = nullptr;
    float* w = nullptr;
    void *gate_up = nullptr, *act = nullptr;  // [R, 2I] bf16 (then [R, H]), [R, I] bf16
    size_t bytes = 0;
    MoeScratch(const ModelConfig& c, int64_t T, void* base) {
      const int64_t R = T * c.num_experts_per_tok, H = c.hidden_size, I = c.intermediate_size;
      auto take = [&](size_t n) {
        void* q = static_cast<uint8_t*>(base) + bytes;
        bytes += (n + 255) / 256 * 256;
        return q;
      };
      ids = static_cast<int32_t*>(take(size_t(R) * 4));
      w = static_cast<float*>(take(size_t(R) * 4));
      offsets = static_cast<int32_t*>(take(size_t(c.num_experts + 1) * 4));
      slot_of = static_cast<int32_t*>(take(size_t(R) * 4));
      perm_rows = static_cast<int32_t*>(take(size_t(R) * 4));
      gate_up = take(size_t(R * std::max(2 * I, H)) * 2);
      act = take(size_t(R * I) * 2);
    }
  };
  // Per MoE layer (keyed by its router weight): device arrays of the experts' gate|up and down
  // matrices, what the grouped GEMM indexes by expert.
  struct MoeLayer {
    const void* const* gate_up = nullptr;
    const void* const* down = nullptr;
  };
  std::unordered_map<const void*, MoeLayer> moe_layers_;
  bool moe_kernels_ = false;  // set by prepare when the model's experts fit the kernels

  // The matrix `ls` was fused into at load, or nullptr.
  const Fused* fused_for(std::span<const Linear* const> ls) const {
    auto it = fused_.find(ls[0]->w);
    return it != fused_.end() && it->second.count == ls.size() ? &it->second : nullptr;
  }

  // The pinned buffer a launch copies its n ids into (the previous launch was waited for); the
  // launch sets launched_ids_ once everything is queued.
  int32_t* launch_ids(int64_t n) {
    GALE_ASSERT(launched_ids_ < 0);
    grow_pinned(h_ids_, size_t(std::max<int64_t>(n, 1)) * 4);
    return static_cast<int32_t*>(h_ids_.p);
  }

  void drop_graphs() {
    for (auto& [k, g] : graphs_) cudaGraphExecDestroy(g);
    graphs_.clear();
  }

  void grow_device(Grow& g, size_t bytes) {
    if (bytes <= g.bytes) return;
    bytes = std::max(bytes, g.bytes * 2);
    if (g.p) release(g.p, g.bytes);
    g.p = nullptr;
    g.bytes = 0;
    g.p = alloc(bytes);
    g.bytes = bytes;
  }

  const float* vec(const std::vector<float>& v) {
    auto it = vmap_.find(v.data());
    GALE_ASSERT(it != vmap_.end());
    return it->second;
  }

  void gemm(const void* w, int64_t n, Act in, Act out, bool accumulate) {
    cuda::GemmParams p{in.data, in.ld, w, in.cols, out.data, out.ld, out.dtype, in.rows, n, in.cols, accumulate};
    if (use_gemv_ && cuda::gemv_bf16_supported(p)) {  // decode batches: a pass over W
      cuda_check(cuda::gemv_bf16(p, stream_), "GEMV");
      return;
    }
    cudaError_t e = cuda::gemm_bf16(gemm_, p, stream_);
    if (e == cudaErrorNotSupported) throw Error(cuda::gemm_last_error(gemm_));
    cuda_check(e, "GEMM");
  }

  void bias(const float* b, Act out) {
    cuda::BiasAddParams p{out.data, out.ld, out.dtype, b, out.rows, out.cols};
    cuda_check(cuda::bias_add(p, stream_), "bias_add");
  }

  void gather(Act src, const int32_t* rows, Act dst) {
    GALE_ASSERT(src.dtype == dst.dtype && src.cols == dst.cols);
    cuda::GatherRowsParams p{src.data, src.ld, rows, dst.data, dst.ld, src.dtype, dst.rows, src.cols};
    cuda_check(cuda::gather_rows(p, stream_), "gather_rows");
  }

  // Host row lists (MoE dispatch) go through a stream-ordered copy: the source is pageable, so
  // the driver stages it before returning and the next expert may reuse the host vector.
  int32_t* upload_rows(std::span<const int32_t> rows) {
    grow_device(d_rows_, rows.size_bytes());
    cuda_check(cudaMemcpyAsync(d_rows_.p, rows.data(), rows.size_bytes(), cudaMemcpyHostToDevice, stream_), "upload");
    return static_cast<int32_t*>(d_rows_.p);
  }

  // Device copies of the weights.
  void* upload_matrix(const Linear& l, void* dst = nullptr);
  void interleave4(Fused& f, int64_t in);
  const float* upload_vector(const std::vector<float>& v);
  void upload_bytes(void* dst, const void* src, DType src_dtype, size_t n_elems, DType dst_dtype);
  void* device_alloc_owned(size_t bytes) {
    void* p = alloc(bytes);
    owned_.push_back({p, bytes});
    return p;
  }

  int dev_;
  double util_;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t plan_sent_ = nullptr;
  cudaEvent_t ids_ready_ = nullptr;  // the launched step's ids reached h_ids_
  Grow h_ids_;                       // pinned
  int64_t launched_ids_ = -1;        // ids the launch owes wait_ids(); -1: none
  bool launched_argmax_ = false;
  // GALE_PROFILE=1: time from each greedy step's plan upload to its argmax ids reaching the host,
  // on the GPU's clock; against the engine's wall time per step it shows how long the GPU waits
  // on the host.
  bool profile_ = std::getenv("GALE_PROFILE") != nullptr;
  cudaEvent_t prof_begin_ = nullptr, prof_end_ = nullptr;
  std::vector<float> prof_ms_;
  void profile_step_done() {
    float ms = 0;
    if (profile_ && cudaEventElapsedTime(&ms, prof_begin_, prof_end_) == cudaSuccess) prof_ms_.push_back(ms);
  }
  cuda::GemmContext* gemm_ = nullptr;
  ModelConfig cfg_;
  int64_t rot_dim_ = 0;
  std::vector<std::pair<void*, size_t>> owned_;
  std::unordered_map<const void*, const void*> wmap_;  // host weight -> device bf16 copy
  std::unordered_map<const void*, Fused> fused_;       // first projection's host weight -> fused
  std::unordered_map<const float*, const float*> vmap_;
  const void* embed_ = nullptr;
  DType embed_dtype_ = DType::BF16;

  // The step plan on the device (one packed buffer) and what the attention calls need of it.
  Grow h_plan_, d_plan_, d_ws_, d_rows_, d_argmax_ws_, d_wts_, d_act_;
  int32_t *d_ids_ = nullptr, *d_slots_ = nullptr, *d_seq_lens_ = nullptr, *d_cu_q_ = nullptr, *d_start_ = nullptr,
          *d_logit_rows_ = nullptr, *d_tables_ = nullptr;
  float *d_cos_ = nullptr, *d_sin_ = nullptr;
  int64_t n_seqs_ = 0, n_tokens_ = 0, max_blocks_ = 0, max_q_len_ = 0, max_seq_len_ = 0;
  bool all_decode_ = false;
  int64_t n_lead_decode_ = 0;  // leading one-token sequences (all of them in a decode step)

  // CUDA graphs of whole decode steps, one per (padded batch, block-table bucket, KV cache):
  // a step of that shape replays its graph (one launch instead of ~11 per layer).
  struct GraphKey {
    int64_t rows, table_cols;
    const void* kv;
    bool operator<(const GraphKey& o) const {
      return std::tie(rows, table_cols, kv) < std::tie(o.rows, o.table_cols, o.kv);
    }
  };
  std::map<GraphKey, cudaGraphExec_t> graphs_;
  bool graphable_ = false, capturing_ = false;
  GraphKey key_{};
  bool use_gemv_ = std::getenv("GALE_CUDA_GEMV") == nullptr || std::string(std::getenv("GALE_CUDA_GEMV")) != "0";
  // Fusions (all on by default; GALE_CUDA_FUSE lists those on, for A/B runs): rope = RoPE with
  // the K/V write, norm = RMSNorm inside the decode GEMV, silu = SiLU-mul in the gate|up GEMV,
  // qkv = RoPE and the K/V write in the q|k|v GEMV's epilogue (with norm).
  static bool fused(const char* what) {
    const char* env = std::getenv("GALE_CUDA_FUSE");
    return std::string(env ? env : "rope,norm,silu,qkv").find(what) != std::string::npos;
  }
  bool fuse_rope_ = fused("rope");
  bool fuse_qkv_ = fused("qkv");
  bool fuse_norm_ = use_gemv_ && fused("norm");
  bool fuse_silu_ = fused("silu");  // gate|up interleaved at load, SiLU-mul in the GEMV's epilogue
  // GALE_CUDA_MOE=0: MoE routing on the host and one GEMM per expert (the Backend default), for
  // A/B runs; such steps are not captured into graphs.
  bool moe_enabled_ = std::getenv("GALE_CUDA_MOE") == nullptr || std::string(std::getenv("GALE_CUDA_MOE")) != "0";
  bool graphs_enabled_ = std::getenv("GALE_CUDA_GRAPHS") == nullptr || std::string(std::getenv("GALE_CUDA_GRAPHS")) != "0";
};

// ---- weights ---------------------------------------------------------------------------------

void CudaBackend::upload_bytes(void* dst, const void* src, DType src_dtype, size_t n, DType dst_dtype) {
  // Through two pinned staging halves: the host fills (and converts into) one while the copy
  // engine drains the other.
  constexpr size_t kStage = size_t(64) << 20;
  grow_pinned(h_plan_, 2 * kStage);
  cudaEvent_t done[2];
  for (auto& e : done) cuda_check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
  const size_t out_es = dtype_size(dst_dtype), in_es = dtype_size(src_dtype);
  const size_t per = kStage / out_es;
  int half = 0;
  for (size_t i0 = 0; i0 < n; i0 += per, half ^= 1) {
    const size_t cnt = std::min(per, n - i0);
    cuda_check(cudaEventSynchronize(done[half]), "upload");
    uint8_t* stage = static_cast<uint8_t*>(h_plan_.p) + size_t(half) * kStage;
    const uint8_t* s = static_cast<const uint8_t*>(src) + i0 * in_es;
    parallel_for(int64_t(cnt), [&](int64_t b, int64_t e, int) {
      if (src_dtype == dst_dtype) {
        std::memcpy(stage + size_t(b) * out_es, s + size_t(b) * in_es, size_t(e - b) * out_es);
      } else if (dst_dtype == DType::BF16) {
        uint16_t* o = reinterpret_cast<uint16_t*>(stage);
        for (int64_t j = b; j < e; ++j) o[j] = f32_to_bf16(load_as_f32(s, src_dtype, size_t(j)));
      } else {
        float* o = reinterpret_cast<float*>(stage);
        for (int64_t j = b; j < e; ++j) o[j] = load_as_f32(s, src_dtype, size_t(j));
      }
    }, int64_t(1) << 16);
    cuda_check(cudaMemcpyAsync(static_cast<uint8_t*>(dst) + i0 * out_es, stage, cnt * out_es, cudaMemcpyHostToDevice,
                          stream_),
          "upload");
    cuda_check(cudaEventRecord(done[half], stream_), "upload");
  }
  cuda_check(cudaStreamSynchronize(stream_), "upload");
  for (auto& e : done) cudaEventDestroy(e);
}

// Reorders a fused [gate; up] matrix (2I rows of `in` bf16) in place into groups of four:
// rows 8b..8b+3 = gate rows 4b..4b+3, rows 8b+4..8b+7 = up rows 4b..4b+3 (through one
// temporary copy, freed before the KV cache is sized).
void CudaBackend::interleave4(Fused& f, int64_t in) {
  const int64_t I = f.n / 2;
  const size_t row = size_t(in) * 2, bytes = size_t(f.n) * row;
  void* tmp = nullptr;
  cuda_check(cudaDeviceSynchronize(), "weight upload");  // the staged copies into f.w went out on other streams
  cuda_check(cudaMalloc(&tmp, bytes), "cudaMalloc (gate|up reorder)");
  cuda_check(cudaMemcpyAsync(tmp, f.w, bytes, cudaMemcpyDeviceToDevice, stream_), "gate|up reorder");
  uint8_t* dst = static_cast<uint8_t*>(f.w);
  const uint8_t* src = static_cast<const uint8_t*>(tmp);
  // Four rows at a time: gate block b to 8b, up block b to 8b + 4.
  cuda_check(cudaMemcpy2DAsync(dst, 8 * row, src, 4 * row, 4 * row, size_t(I / 4), cudaMemcpyDeviceToDevice, stream_),
        "gate|up reorder");
  cuda_check(cudaMemcpy2DAsync(dst + 4 * row, 8 * row, src + size_t(I) * row, 4 * row, 4 * row, size_t(I / 4),
                          cudaMemcpyDeviceToDevice, stream_),
        "gate|up reorder");
  cuda_check(cudaStreamSynchronize(stream_), "gate|up reorder");
  cuda_check(cudaFree(tmp), "cudaFree");
  f.interleaved4 = true;
}

void* CudaBackend::upload_matrix(const Linear& l, void* dst) {
  if (auto it = wmap_.find(l.w); it != wmap_.end() && !dst) return const_cast<void*>(it->second);
  if (!dst) dst = device_alloc_owned(size_t(l.out * l.in) * 2);
  upload_bytes(dst, l.w, l.dtype, size_t(l.out * l.in), DType::BF16);
  wmap_[l.w] = dst;
  return dst;
}

const float* CudaBackend::upload_vector(const std::vector<float>& v) {
  if (v.empty()) return nullptr;
  if (auto it = vmap_.find(v.data()); it != vmap_.end()) return it->second;
  float* d = static_cast<float*>(device_alloc_owned(v.size() * 4));
  cuda_check(cudaMemcpy(d, v.data(), v.size() * 4, cudaMemcpyHostToDevice), "upload");
  vmap_[v.data()] = d;
  return d;
}

void CudaBackend::prepare(const ModelConfig& cfg, const ModelWeights& w) {
  cfg_ = cfg;
  rot_dim_ = int64_t(double(cfg.head_dim) * cfg.rope.partial_rotary_factor);
  {
    size_t free = 0, total = 0;
    cuda_check(cudaMemGetInfo(&free, &total), "cudaMemGetInfo");
    size_t need = 0;
    for (const LayerWeights& L : w.layers) {
      for (const Linear* l : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down, &L.router}) need += size_t(l->out * l->in) * 2;
      for (const ExpertWeights& X : L.experts) need += size_t(3 * X.gate.out * X.gate.in) * 2;
    }
    need += size_t(w.lm_head.out * w.lm_head.in) * 2 + size_t(cfg.vocab_size * cfg.hidden_size) * dtype_size(w.embed_dtype);
    if (need > free)
      throw Error("the model's weights (" + gib(need) + " as bf16) do not fit in the free memory of " + name() + " (" +
                  gib(free) + " of " + gib(total) + ")");
    const double share = util_ * double(total) - double(total - free);
    if (double(need) > share)
      throw Error("the model's weights (" + gib(need) + " as bf16) exceed --gpu-memory-utilization " +
                  std::to_string(util_).substr(0, 4) + " of " + name() + " (" + gib(size_t(std::max(share, 0.0))) +
                  " available to Gale)");
  }
  // Fuses projections that read the same input into one [sum n, in] matrix.
  auto fuse = [&](std::initializer_list<const Linear*> ls) {
    int64_t n = 0;
    bool any_bias = false;
    for (const Linear* l : ls) {
      n += l->out;
      any_bias |= !l->bias.empty();
    }
    const int64_t in = (*ls.begin())->in;
    uint8_t* d = static_cast<uint8_t*>(device_alloc_owned(size_t(n * in) * 2));
    Fused f{d, n, ls.size(), nullptr};
    std::vector<float> b;
    for (const Linear* l : ls) {
      upload_matrix(*l, d);
      d += size_t(l->out * in) * 2;
      if (any_bias) {
        if (l->bias.empty()) b.insert(b.end(), size_t(l->out), 0.0f);
        else b.insert(b.end(), l->bias.begin(), l->bias.end());
      }
      upload_vector(l->bias);
    }
    if (any_bias) {
      float* db = static_cast<float*>(device_alloc_owned(b.size() * 4));
      cuda_check(cudaMemcpy(db, b.data(), b.size() * 4, cudaMemcpyHostToDevice), "upload");
      f.bias = db;
    }
    fused_[(*ls.begin())->w] = f;
  };
  for (const LayerWeights& L : w.layers) {
    for (const std::vector<float>* v : {&L.attn_norm, &L.ffn_norm, &L.q_norm, &L.k_norm}) upload_vector(*v);
    fuse({&L.q, &L.k, &L.v});
    upload_matrix(L.o);
    upload_vector(L.o.bias);  // linear() adds it (attention_bias)
    if (cfg.num_experts > 0) {
      upload_matrix(L.router);
      std::vector<const void*> gu, dn;
      for (const ExpertWeights& X : L.experts) {
        fuse({&X.gate, &X.up});
        upload_matrix(X.down);
        upload_vector(X.down.bias);
        gu.push_back(fused_.at(X.gate.w).w);
        dn.push_back(wmap_.at(X.down.w));
      }
      auto table = [&](const std::vector<const void*>& ptrs) {
        void* d = device_alloc_owned(ptrs.size() * sizeof(void*));
        cuda_check(cudaMemcpy(d, ptrs.data(), ptrs.size() * sizeof(void*), cudaMemcpyHostToDevice), "upload");
        return static_cast<const void* const*>(d);
      };
      moe_layers_[L.router.w] = {table(gu), table(dn)};
    } else {
      fuse({&L.gate, &L.up});
      if (fuse_silu_ && L.gate.out % 4 == 0 && L.gate.bias.empty() && L.up.bias.empty()) interleave4(fused_[L.gate.w], L.gate.in);
      upload_matrix(L.down);
      upload_vector(L.down.bias);  // mlp_bias
    }
  }
  // MoE on the device when the kernels take the shapes (moe_route: E <= 256, top_k <= 8; the
  // grouped GEMM: dimensions multiples of 8) and the experts have no biases.
  moe_kernels_ = moe_enabled_ && cfg.num_experts > 0 && cfg.num_experts <= cuda::kMoeMaxExperts &&
                 cfg.num_experts_per_tok >= 1 && cfg.num_experts_per_tok <= std::min(cfg.num_experts, cuda::kMoeMaxTopK) &&
                 cfg.hidden_size % 8 == 0 && cfg.intermediate_size % 8 == 0;
  for (const LayerWeights& L : w.layers)
    for (const ExpertWeights& X : L.experts)
      moe_kernels_ = moe_kernels_ && X.gate.bias.empty() && X.up.bias.empty() && X.down.bias.empty() &&
                     X.gate.out == cfg.intermediate_size && X.down.in == cfg.intermediate_size;
  if (moe_kernels_) cuda_check(cuda::moe_grouped_gemm_init(), "grouped GEMM setup");  // not mid-capture
  upload_vector(w.final_norm);
  // The embedding table is gathered in its stored dtype; the LM head needs bf16 (a tied bf16
  // table is shared).
  if (w.embed_dtype == DType::BF16 || w.lm_head.w != w.embed) {
    embed_ = device_alloc_owned(size_t(cfg.vocab_size * cfg.hidden_size) * dtype_size(w.embed_dtype));
    upload_bytes(const_cast<void*>(embed_), w.embed, w.embed_dtype, size_t(cfg.vocab_size * cfg.hidden_size),
                 w.embed_dtype);
    embed_dtype_ = w.embed_dtype;
    if (w.lm_head.w == w.embed) wmap_[w.embed] = embed_;
  }
  void* head = upload_matrix(w.lm_head);
  if (!embed_) {  // tied f32/f16 table: gather from the bf16 copy of the LM head
    embed_ = head;
    embed_dtype_ = DType::BF16;
  }
  upload_vector(w.lm_head.bias);
}

// ---- per step --------------------------------------------------------------------------------

namespace {

// Batch buckets of captured decode graphs (vLLM pads the same way): few graphs, little padding.
constexpr int64_t kGraphBuckets[] = {1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512};

bool decode_step(const StepPlan& plan) {
  return plan.all_decode() && int64_t(plan.logit_rows.size()) == plan.T();
}

}  // namespace

int64_t CudaBackend::padded_tokens(const StepPlan& plan) const {
  // MoE steps are graphable when routing stays on the device (moe_kernels_).
  if (!graphs_enabled_ || (cfg_.num_experts > 0 && !moe_kernels_) || !decode_step(plan)) return plan.T();
  for (int64_t b : kGraphBuckets)
    if (b >= plan.T()) return b;
  return plan.T();
}

void CudaBackend::begin_step(const StepPlan& plan) {
  const int64_t T = plan.T(), Tp = std::max(plan.padded_T, T), pad = Tp - T;
  const int64_t S = int64_t(plan.seqs.size()) + pad, R = int64_t(plan.logit_rows.size()) + pad;
  const int64_t half = plan.rot_dim / 2, bs = plan.block_size;
  int64_t maxb = 1, max_q = 0, max_len = 0;
  // Leading one-token sequences (the scheduler puts decodes first) go to the GQA-aware split-K
  // decode kernel even in a mixed step; the prefill kernel would read each K/V once per query
  // head for them.
  n_lead_decode_ = 0;
  while (n_lead_decode_ < int64_t(plan.seqs.size()) && plan.seqs[size_t(n_lead_decode_)].n == 1) ++n_lead_decode_;
  for (const StepPlan::Seq& s : plan.seqs) {
    maxb = std::max<int64_t>(maxb, int64_t(s.block_table.size()));
    if (&s - plan.seqs.data() >= n_lead_decode_) max_q = std::max(max_q, s.n);
    max_len = std::max(max_len, s.start_pos + s.n);
  }
  all_decode_ = plan.all_decode();
  if (all_decode_) n_lead_decode_ = int64_t(plan.seqs.size()) + pad;
  graphable_ = graphs_enabled_ && (cfg_.num_experts == 0 || moe_kernels_) && decode_step(plan) &&
               Tp == padded_tokens(plan);
  if (graphable_) {
    // A graph bakes the block-table stride and the attention split in: round the table width
    // up to a power of two and size the split for the longest context that width holds.
    int64_t cols = 16;
    while (cols < maxb) cols *= 2;
    maxb = cols;
    max_len = cols * bs;
    key_ = {Tp, cols, plan.kv_base};
  }
  // Packed layout (4-byte words): ids[T] slots[T] seq_lens[S] cu_q[S+1] start[S] logit_rows[R]
  // tables[S*maxb] cos[T*half] sin[T*half]; padding rows are one-token sequences with slot -1
  // (their K/V are not written) and an all-zero block table.
  const size_t words = size_t(2 * Tp + 3 * S + 1 + R + S * maxb + 2 * Tp * half);
  const size_t bytes = words * 4;
  cuda_check(cudaEventSynchronize(plan_sent_), "step");  // the previous plan left the pinned buffer
  if (profile_) cuda_check(cudaEventRecord(prof_begin_, stream_), "profile");
  grow_pinned(h_plan_, bytes);
  grow_device(d_plan_, bytes);
  int32_t* h = static_cast<int32_t*>(h_plan_.p);
  int32_t* ids = h;
  int32_t* slots = ids + Tp;
  int32_t* lens = slots + Tp;
  int32_t* cu = lens + S;
  int32_t* start = cu + S + 1;
  int32_t* lrows = start + S;
  int32_t* tables = lrows + R;
  float* cs = reinterpret_cast<float*>(tables + S * maxb);
  float* sn = cs + Tp * half;
  std::memcpy(ids, plan.tokens.data(), size_t(T) * 4);
  std::fill(ids + T, ids + Tp, 0);
  std::fill(slots + T, slots + Tp, -1);
  cu[0] = 0;
  for (int64_t i = 0; i < S; ++i) {
    int32_t* row = tables + i * maxb;
    if (i >= int64_t(plan.seqs.size())) {  // padding
      lens[i] = 1;
      cu[i + 1] = cu[i] + 1;
      start[i] = 0;
      std::fill(row, row + maxb, 0);
      continue;
    }
    const StepPlan::Seq& s = plan.seqs[size_t(i)];
    for (int64_t j = 0; j < s.n; ++j) {
      const int64_t pos = s.start_pos + j;
      slots[s.t0 + j] = int32_t(int64_t(s.block_table[size_t(pos / bs)]) * bs + pos % bs);
    }
    lens[i] = int32_t(s.start_pos + s.n);
    cu[i + 1] = int32_t(s.t0 + s.n);
    start[i] = int32_t(s.start_pos);
    std::copy(s.block_table.begin(), s.block_table.end(), row);
    std::fill(row + s.block_table.size(), row + maxb, 0);
  }
  std::copy(plan.logit_rows.begin(), plan.logit_rows.end(), lrows);
  for (int64_t i = 0; i < pad; ++i) lrows[int64_t(plan.logit_rows.size()) + i] = int32_t(T + i);
  std::memcpy(cs, plan.cos.data(), size_t(T * half) * 4);
  std::memcpy(sn, plan.sin.data(), size_t(T * half) * 4);
  std::fill(cs + T * half, cs + Tp * half, 1.0f);
  std::fill(sn + T * half, sn + Tp * half, 0.0f);
  cuda_check(cudaMemcpyAsync(d_plan_.p, h_plan_.p, bytes, cudaMemcpyHostToDevice, stream_), "step upload");
  cuda_check(cudaEventRecord(plan_sent_, stream_), "step");

  int32_t* d = static_cast<int32_t*>(d_plan_.p);
  d_ids_ = d;
  d_slots_ = d + Tp;
  d_seq_lens_ = d_slots_ + Tp;
  d_cu_q_ = d_seq_lens_ + S;
  d_start_ = d_cu_q_ + S + 1;
  d_logit_rows_ = d_start_ + S;
  d_tables_ = d_logit_rows_ + R;
  d_cos_ = reinterpret_cast<float*>(d_tables_ + S * maxb);
  d_sin_ = d_cos_ + Tp * half;
  n_seqs_ = S;
  n_tokens_ = Tp;
  max_blocks_ = maxb;
  max_q_len_ = max_q;
  max_seq_len_ = max_len;
  if (n_lead_decode_ > 0) {  // the split-K workspace, sized here: nothing may be allocated mid-capture
    cuda::DecodeAttentionParams p{};
    p.n_seqs = n_lead_decode_;
    p.n_heads = cfg_.num_heads;
    p.n_kv_heads = cfg_.num_kv_heads;
    p.head_dim = cfg_.head_dim;
    p.max_seq_len = max_len;
    p.block_size = bs;
    size_t ws = 0;  // the largest split any layer's window may use
    for (int64_t w : cfg_.layer_window) {
      p.window = w;
      ws = std::max(ws, cuda::decode_attention_workspace_size(p));
    }
    grow_device(d_ws_, ws);
  }
  if (cfg_.num_experts == 0)  // swiglu_mlp's activations (sized here: nothing is allocated mid-capture)
    grow_device(d_act_, size_t(Tp * cfg_.intermediate_size) * 2);
}

bool CudaBackend::replay_step() {
  if (!graphable_) return false;
  if (auto it = graphs_.find(key_); it != graphs_.end()) {
    cuda_check(cudaGraphLaunch(it->second, stream_), "cudaGraphLaunch");
    return true;
  }
  cuda_check(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
  capturing_ = true;
  return false;
}

void CudaBackend::end_step_ops() {
  if (!capturing_) return;
  capturing_ = false;
  cudaGraph_t graph = nullptr;
  cuda_check(cudaStreamEndCapture(stream_, &graph), "cudaStreamEndCapture");
  cudaGraphExec_t exec = nullptr;
  cudaError_t e = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  cuda_check(e, "cudaGraphInstantiate");
  graphs_[key_] = exec;
  cuda_check(cudaGraphLaunch(exec, stream_), "cudaGraphLaunch");  // capture ran nothing: run it now
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
  GALE_ASSERT(kv.dtype == DType::BF16 && k.dtype == DType::BF16 && v.dtype == DType::BF16);
  return {k.data, k.ld, v.data, v.ld, k.dtype, kv.k, kv.v, kv.dtype, d_slots_, n_tokens_, kv.n_kv_heads * kv.head_dim};
}

void CudaBackend::attention(const KVLayer& kv, Act q, Act k, Act v, int64_t n_heads, int64_t window, float scale,
                            Act out) {
  cuda_check(cuda::kv_cache_write(cache_write_params(kv, k, v), stream_), "kv_cache_write");
  attend(kv, q, n_heads, window, scale, out);
}

// Decode steps (M <= 4): RMSNorm, the q|k|v GEMV, RoPE and the K/V write in one kernel.
bool CudaBackend::rmsnorm_qkv_rope_cache(Act x, const std::vector<float>& norm_w, float eps,
                                         std::span<const Linear* const> qkv, Act out, const KVLayer& kv) {
  if (!fuse_qkv_ || !fuse_norm_ || qkv.size() != 3 || rot_dim_ != kv.head_dim || x.dtype != DType::F32 ||
      out.dtype != DType::BF16 || kv.dtype != DType::BF16)
    return false;
  const Fused* f = fused_for(qkv);
  if (!f || f->bias || f->interleaved4) return false;
  cuda::GemmParams p{x.data, x.ld, f->w, x.cols, out.data, out.ld, DType::BF16, x.rows, f->n, x.cols, false};
  cuda::GemvFusion in{cuda::GemvFusion::kRMSNorm, vec(norm_w), eps};
  in.rope = true;
  in.rk = {d_cos_, d_sin_, qkv[0]->out, qkv[1]->out, kv.head_dim, kv.k, kv.v, d_slots_};
  if (out.cols != f->n || qkv[1]->out != kv.n_kv_heads * kv.head_dim || !cuda::gemv_bf16_fusable(p, in)) return false;
  cuda_check(cuda::gemv_bf16(p, stream_, in), "RMSNorm + q|k|v GEMV + RoPE + K/V write");
  return true;
}

void CudaBackend::rope_attention(const KVLayer& kv, Act q, Act k, Act v, int64_t n_heads, int64_t window, float scale,
                                 Act out) {
  if (!fuse_rope_ || rot_dim_ <= 0) return Backend::rope_attention(kv, q, k, v, n_heads, window, scale, out);
  GALE_ASSERT(q.dtype == k.dtype);
  const cuda::RopeParams r{q.data, q.ld, n_heads, k.data, k.ld, kv.n_kv_heads, q.dtype, q.rows, kv.head_dim, rot_dim_,
                           d_cos_, d_sin_};
  cuda_check(cuda::rope_kv_write({r, cache_write_params(kv, k, v)}, stream_), "rope + kv_cache_write");
  attend(kv, q, n_heads, window, scale, out);
}

// Attention of the step's queries over the cache (K/V of this step already written).
void CudaBackend::attend(const KVLayer& kv, Act q, int64_t n_heads, int64_t window, float scale, Act out) {
  GALE_ASSERT(kv.dtype == DType::BF16 && q.dtype == DType::BF16);
  const int64_t D = n_lead_decode_;
  if (D > 0) {
    cuda::DecodeAttentionParams p{};
    p.q = q.data;
    p.q_dtype = q.dtype;
    p.ldq = q.ld;
    p.k_cache = kv.k;
    p.v_cache = kv.v;
    p.kv_dtype = kv.dtype;
    p.block_tables = d_tables_;
    p.max_blocks_per_seq = max_blocks_;
    p.seq_lens = d_seq_lens_;
    p.max_seq_len = max_seq_len_;
    p.n_seqs = D;
    p.n_heads = n_heads;
    p.n_kv_heads = kv.n_kv_heads;
    p.head_dim = kv.head_dim;
    p.block_size = kv.block_size;
    p.window = window;
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
  const double gemm_s = timed(10, [&] { gemm(b, d, x, out, false); });
  *peak_gflops = 2.0 * double(d) * double(d) * double(d) / gemm_s / 1e9;
  release(a, n);
  release(b, n);
  release(y, size_t(d * d) * 2);
  cudaEventDestroy(t0);
  cudaEventDestroy(t1);
  return true;
}

std::unique_ptr<Backend> make_cuda_backend(int device, double gpu_memory_utilization) {
  return std::make_unique<CudaBackend>(device, gpu_memory_utilization);
}

}  // namespace gale
