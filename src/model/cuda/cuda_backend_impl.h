// The CUDA backend's class, shared by the three files that implement it, one responsibility each:
//   cuda_backend.cpp      construction, memory, and the ops (the Backend overrides that launch
//                         kernels: norms, products, RoPE, attention, MoE, argmax / sampling)
//   cuda_weights.cpp      prepare: the weights uploaded once as bf16 or FP8 (q|k|v and gate|up fused,
//                         gate|up interleaved for the SwiGLU GEMV, the MoE experts' pointer tables)
//   cuda_step_graphs.cpp  per step: the plan packed into one upload, decode batches padded to a
//                         bucket, CUDA graphs captured and replayed
// One GPU, one stream. Activations are bf16 with an f32 residual stream, the KV cache bf16 or
// E4M3 (--kv-cache-dtype fp8).
// Only the factory (cuda_backend.h) is for the rest of Gale; this header is the backend's own.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/error.h"
#include "kernels/cuda/bias_add.cuh"
#include "kernels/cuda/decode_attention.cuh"
#include "kernels/cuda/gather_rows.cuh"
#include "kernels/cuda/gemm_int.cuh"
#include "kernels/cuda/gemm_lt.cuh"
#include "kernels/cuda/gemv_bf16.cuh"
#include "kernels/cuda/kv_cache_write.cuh"
#include "model/backend.h"
#include "model/cuda/cuda_buffers.h"
#include "model/cuda/cuda_options.h"
#include "model/cuda/cuda_sampling.h"

namespace gale {

// The shape half of the decode attention's parameters: what sizes its split-K workspace
// (begin_step, before any capture) and what each layer's launch then completes (attend).
inline cuda::DecodeAttentionParams decode_attention_shape(int64_t n_seqs, int64_t n_heads, int64_t n_kv_heads,
                                                          int64_t head_dim, int64_t max_seq_len, int64_t block_size,
                                                          int64_t window) {
  cuda::DecodeAttentionParams p{};
  p.n_seqs = n_seqs;
  p.n_heads = n_heads;
  p.n_kv_heads = n_kv_heads;
  p.head_dim = head_dim;
  p.max_seq_len = max_seq_len;
  p.block_size = block_size;
  p.window = window;
  return p;
}

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(const CudaOptions& options);
  ~CudaBackend() override;

  std::string name() const override { return "cuda:" + std::to_string(opt_.device); }
  // Scaled FP8 weights too: dense projections stay E4M3 on the device (the decode GEMV and the
  // W8A8 GEMM), the MoE experts and the router are dequantized to bf16 at upload. Integer
  // weights (Linear::integer_weights, act-order included) likewise: dense projections stay
  // INT8 / packed INT4 (kernels/cuda/gemm_int.cuh), the rest becomes bf16.
  bool supports(const Linear& l) const override;
  std::string device_model() const override;
  bool is_cpu() const override { return false; }
  DType act_dtype() const override { return DType::BF16; }
  DType kv_dtype() const override { return DType::BF16; }
  // E4M3 too: written by kv_cache_write / rope_kv_write, read by both attention kernels (the
  // q|k|v GEMV's fused K/V write stays bf16: rmsnorm_qkv_rope_cache declines an E4M3 cache).
  bool supports_kv(DType dtype) const override { return dtype == DType::BF16 || dtype == DType::F8_E4M3; }

  int64_t default_kv_budget() const override;
  bool probe(double* bandwidth_gbs, double* peak_gflops) override;

  void* alloc(size_t bytes) override;
  void release(void* p, size_t) override;
  void copy(void* dst, const void* src, size_t bytes) override;
  void download(void* host, const void* src, size_t bytes) override;
  void* alloc_host(size_t bytes) override;  // pinned (cudaMallocHost): the async copies need it
  void release_host(void* p, size_t bytes) override;
  void copy_to_host_async(void* host_dst, const void* src, size_t bytes) override;
  void copy_from_host_async(void* dst, const void* host_src, size_t bytes) override;

  // cuda_weights.cpp
  void prepare(const ModelConfig& cfg, const ModelWeights& w) override;

  // cuda_step_graphs.cpp
  int64_t padded_tokens(const StepPlan& plan) const override;
  void begin_step(const StepPlan& plan) override;
  bool replay_step() override;
  void end_step_ops() override;

  // The ops (cuda_backend.cpp).
  void embedding(const ModelWeights& w, Act out) override;
  void rmsnorm(Act in, const std::vector<float>& w, float eps, Act out) override;
  void head_rmsnorm(Act x, int64_t n_heads, const std::vector<float>& w, float eps) override;
  void linear(const Linear& l, Act in, Act out, bool accumulate) override;
  void linear_fused(std::span<const Linear* const> ls, Act in, Act out) override;
  void rmsnorm_linear(Act x, const std::vector<float>& norm_w, float eps, Act normed, std::span<const Linear* const> ls,
                      Act out) override;
  void swiglu_mlp(Act x, const std::vector<float>& norm_w, float eps, Act normed, Act gate_up, const Linear& gate,
                  const Linear& up, const Linear& down, Act out) override;
  void rope(Act q, int64_t n_q_heads, Act k, int64_t n_k_heads, int64_t head_dim) override;
  void attention(const KVLayer& kv, Act q, Act k, Act v, int64_t n_heads, int64_t window, float scale,
                 Act out) override;
  bool rmsnorm_qkv_rope_cache(Act x, const std::vector<float>& norm_w, float eps, std::span<const Linear* const> qkv,
                              Act out, const KVLayer& kv) override;
  void attend_cached(const KVLayer& kv, Act q, int64_t n_heads, int64_t window, float scale, Act out) override {
    attend(kv, q, n_heads, window, scale, out);
  }
  void rope_attention(const KVLayer& kv, Act q, Act k, Act v, int64_t n_heads, int64_t window, float scale,
                      Act out) override;
  void silu_mul(Act gate, Act up) override;
  void gather_rows(Act src, std::span<const int32_t> rows, Act dst) override;
  void gather_logit_rows(Act src, Act dst) override { gather(src, d_logit_rows_, dst); }
  void scatter_add_rows(Act src, std::span<const int32_t> rows, std::span<const float> weight, Act dst) override;
  size_t moe_workspace_bytes(const ModelConfig& c, int64_t T) const override {
    return moe_kernels_ ? MoeScratch(c, T, nullptr).bytes : Backend::moe_workspace_bytes(c, T);
  }
  void moe_experts(const ModelConfig& c, const LayerWeights& L, Act xn, Act router, void* workspace, Act x) override;
  void to_host(Act src, float* dst) override;
  void argmax_rows(Act logits, int32_t* out) override {
    launch_argmax_rows(logits);
    wait_ids(out);
  }
  void launch_argmax_rows(Act logits) override;
  // Sampling where the logits are (model/cuda/cuda_sampling.cpp over kernels/cuda/sample.cu):
  // penalties, temperature, top-k / top-p / min-p and the draw; only the ids come back.
  bool has_sample_rows() const override { return true; }
  void sample_rows(Act logits, std::span<const RowSampling> rows, int32_t* out) override {
    launch_sample_rows(logits, rows);
    wait_ids(out);
  }
  void launch_sample_rows(Act logits, std::span<const RowSampling> rows) override;
  void wait_ids(int32_t* out) override;

 private:
  using Grow = GrowBuffer;

  static std::string gib(size_t bytes);

  // ---- ops (cuda_backend.cpp) ----------------------------------------------------------------

  CudaSampling sampling_;  // the sampling kernel's pinned and device buffers
  cuda::KVCacheWriteParams cache_write_params(const KVLayer& kv, Act k, Act v) const;
  void attend(const KVLayer& kv, Act q, int64_t n_heads, int64_t window, float scale, Act out);

  // The pinned buffer a launch copies its n ids into (the previous launch was waited for); the
  // launch sets launched_ids_ once everything is queued.
  int32_t* launch_ids(int64_t n) {
    GALE_ASSERT(launched_ids_ < 0);
    grow_pinned(h_ids_, size_t(std::max<int64_t>(n, 1)) * 4);
    return static_cast<int32_t*>(h_ids_.p);
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

  // A weight matrix on the device: bf16 rows, or E4M3 rows with f32 scales, one per `scols`
  // columns of each row (scale[r * sld + k / scols]; scols >= in: one per row), or integer
  // weights in gemm_int's tiles (im.w set; w unused), with the act-order gather of x's columns.
  struct DevMatrix {
    void* w = nullptr;
    DType dtype = DType::BF16;
    const float* scale = nullptr;
    int64_t scols = 1, sld = 1;
    cuda::IntMatrix im{};
    const int32_t* perm = nullptr;  // [in] on the device, or null
    bool integer() const { return im.w != nullptr; }
  };

  static cuda::IntGemmParams int_params(const DevMatrix& m, Act in, Act out, bool accumulate) {
    return {in.data, in.ld, m.im, out.data, out.ld, out.dtype, in.rows, accumulate};
  }

  // Integer weights: x's columns gathered first for act-order matrices (steps with such
  // matrices are not captured in graphs: the gather buffer may grow), the GEMV for decode rows,
  // else the tensor-core GEMM or its dequantizing fallback.
  void gemm_int(const DevMatrix& m, int64_t n, Act in, Act out, bool accumulate) {
    GALE_ASSERT(n == m.im.N && in.cols == m.im.K);
    if (m.perm) {
      grow_device(d_perm_x_, size_t(in.rows * in.cols) * 2);
      cuda_check(cuda::gather_cols(in.data, in.ld, m.perm, d_perm_x_.p, in.cols, in.rows, in.cols, stream_),
                 "act-order gather");
      in = Act{d_perm_x_.p, DType::BF16, in.rows, in.cols, in.cols};
    }
    const cuda::IntGemmParams p = int_params(m, in, out, accumulate);
    const cudaError_t e = opt_.gemv && in.rows <= 8 && cuda::gemm_int_supported(p)
                              ? cuda::gemv_int(p, stream_)
                              : cuda::gemm_int(gemm_, p, stream_, opt_.int_gemm_max_m);
    if (e == cudaErrorNotSupported) throw Error(cuda::gemm_last_error(gemm_));
    cuda_check(e, "integer-weight GEMM");
  }

  static cuda::GemmParams gemm_params(const DevMatrix& m, int64_t n, Act in, Act out, bool accumulate) {
    cuda::GemmParams p{in.data, in.ld, m.w, in.cols, out.data, out.ld, out.dtype, in.rows, n, in.cols, accumulate};
    p.w_dtype = m.dtype;
    p.w_scale = m.scale;
    p.ws_rows = 1;
    p.ws_cols = m.scols;
    p.ws_ld = m.sld;
    return p;
  }

  void gemm(const DevMatrix& m, int64_t n, Act in, Act out, bool accumulate) {
    if (m.integer()) return gemm_int(m, n, in, out, accumulate);
    const cuda::GemmParams p = gemm_params(m, n, in, out, accumulate);
    if (opt_.gemv && cuda::gemv_bf16_supported(p)) {  // decode batches: a pass over W
      cuda_check(cuda::gemv_bf16(p, stream_), "GEMV");
      return;
    }
    cudaError_t e = m.dtype == DType::F8_E4M3 ? cuda::gemm_fp8(gemm_, p, stream_, opt_.fp8_w8a8)
                                             : cuda::gemm_bf16(gemm_, p, stream_);
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

  const CudaOptions opt_;
  // RMSNorm inside the decode GEMV needs the GEMV (GALE_CUDA_GEMV and the "norm" fusion).
  const bool fuse_norm_;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t plan_sent_ = nullptr;
  cudaEvent_t ids_ready_ = nullptr;  // the launched step's ids reached h_ids_
  Grow h_ids_;                       // pinned
  int64_t launched_ids_ = -1;        // ids the launch owes wait_ids(); -1: none
  bool launched_argmax_ = false;
  // GALE_PROFILE=1: time from each greedy step's plan upload to its argmax ids reaching the host,
  // on the GPU's clock; against the engine's wall time per step it shows how long the GPU waits
  // on the host.
  cudaEvent_t prof_begin_ = nullptr, prof_end_ = nullptr;
  std::vector<float> prof_ms_;
  void profile_step_done() {
    float ms = 0;
    if (opt_.profile && cudaEventElapsedTime(&ms, prof_begin_, prof_end_) == cudaSuccess) prof_ms_.push_back(ms);
  }
  cuda::GemmContext* gemm_ = nullptr;
  // Scratch: decode attention's split-K (sized by begin_step), row lists, argmax, scatter-add
  // weights, swiglu_mlp's activations (sized by begin_step).
  Grow d_ws_, d_rows_, d_argmax_ws_, d_wts_, d_act_;
  Grow d_perm_x_;  // act-order integer weights: x with its columns gathered

  // ---- weights (cuda_weights.cpp) ------------------------------------------------------------

  struct Fused : DevMatrix {  // [n, in]: the projections' rows one after the other
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

  // Device copies of the weights. A group of matrices that are one product (q|k|v, gate|up, or
  // one matrix) stays FP8 on the device when fp8_cols returns its scale grid's column width.
  int64_t fp8_cols(std::span<const Linear* const> ls) const;
  // Whether a group of matrices (one product) stays integer on the device: all integer weights
  // of one dtype, scale grouping, width and act-order permutation, the GALE_CUDA_INT switch on.
  bool int_device(std::span<const Linear* const> ls) const;
  // Those matrices packed into one device matrix of gemm_int's layout, rows one after the other
  // or (interleave4, two matrices gate, up) in GemvFusion::swiglu's groups of four.
  DevMatrix upload_int(std::span<const Linear* const> ls, bool interleave4);
  bool has_perm_ = false;             // some device matrix gathers x (no decode graphs)
  size_t int_scratch_ = 0;            // the largest scratch gemm_int's fallback takes
  DevMatrix upload_matrix(const Linear& l, void* dst = nullptr, float* scale_dst = nullptr, int64_t scols = 0);
  // Reorders rows [gate; up] of rows_bytes each into groups of four (GemvFusion::swiglu's layout).
  void interleave4(void* rows, int64_t n, size_t row_bytes);
  const float* upload_vector(const std::vector<float>& v);
  // scaled: element i of src is row i / scaled->in, column i % scaled->in of that matrix,
  // multiplied by its scale (Linear::scale_layout) before the conversion.
  void upload_bytes(void* dst, const void* src, DType src_dtype, size_t n_elems, DType dst_dtype,
                    const Linear* scaled = nullptr);
  void* device_alloc_owned(size_t bytes) {
    void* p = alloc(bytes);
    owned_.push_back({p, bytes});
    return p;
  }

  ModelConfig cfg_;
  int64_t rot_dim_ = 0;
  std::vector<std::pair<void*, size_t>> owned_;
  std::unordered_map<const void*, DevMatrix> wmap_;     // host weight -> device copy
  std::unordered_map<const void*, Fused> fused_;       // first projection's host weight -> fused
  std::unordered_map<const float*, const float*> vmap_;
  const void* embed_ = nullptr;
  DType embed_dtype_ = DType::BF16;

  // ---- step plan and graphs (cuda_step_graphs.cpp) -------------------------------------------

  // The step plan on the device (one packed buffer) and what the attention calls need of it.
  // h_plan_ also stages the weight uploads (prepare runs before the first step).
  Grow h_plan_, d_plan_;
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
  // Any release of device memory drops the graphs: a captured graph may point into it.
  void drop_graphs();
};

}  // namespace gale
