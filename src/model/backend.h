// Where the transformer's tensors live and how its ops run. `Transformer::forward` is written
// once against this interface (model code once, as the developers' guide asks); `CpuBackend`
// runs the kernels/cpu ops on host memory, `CudaBackend` (GALE_CUDA builds) the kernels/cuda
// ops and cuBLASLt on one GPU. The runtime above (scheduler, prefix cache, sampling) never sees
// a backend: it hands block tables in and gets f32 logits out.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "loader/model_config.h"
#include "model/weights.h"

namespace gale {

// A 2-D view of backend memory: rows x cols elements of dtype, row stride ld (elements).
struct Act {
  void* data = nullptr;
  DType dtype = DType::F32;
  int64_t rows = 0, cols = 0, ld = 0;
  // Columns [c0, c0 + n) of every row (q, k, v inside one fused projection output).
  Act cols_range(int64_t c0, int64_t n) const {
    return {static_cast<uint8_t*>(data) + size_t(c0) * dtype_size(dtype), dtype, rows, n, ld};
  }
  // Rows [r0, r0 + n).
  Act rows_range(int64_t r0, int64_t n) const {
    return {static_cast<uint8_t*>(data) + size_t(r0 * ld) * dtype_size(dtype), dtype, n, cols, ld};
  }
  float* f32() const { return static_cast<float*>(data); }
};

// What one forward step computes, prepared on the host once per step (not per layer).
struct StepPlan {
  struct Seq {
    int64_t t0 = 0, n = 0;                 // its rows in the step's activations
    int64_t start_pos = 0;                 // tokens already cached
    std::span<const int32_t> block_table;
  };
  std::vector<Seq> seqs;
  std::vector<int32_t> tokens;             // [T]
  std::vector<float> cos, sin;             // [T, rot_dim / 2] rotary tables of every token
  int64_t rot_dim = 0;
  int64_t block_size = 0;                  // tokens per KV block
  const void* kv_base = nullptr;           // the KV cache in use (a captured graph is tied to it)
  int64_t padded_T = 0;                    // rows every op runs over (>= T(); see padded_tokens)
  std::vector<int32_t> logit_rows;         // rows whose logits are returned, in order
  int64_t T() const { return int64_t(tokens.size()); }
  bool all_decode() const {
    for (const Seq& s : seqs)
      if (s.n != 1) return false;
    return true;
  }
};

// How Backend::sample_rows picks the token of one logit row: the sequence's sampling parameters
// (runtime/sampler.h, which the model layer does not see), the uniform its generator drew for
// this token, and its penalty lists (borrowed for the call).
struct RowSampling {
  float temperature = 0.0f;  // 0: argmax of the penalized logits
  int32_t top_k = 0;         // 0 = off
  float top_p = 1.0f;        // 1 = off
  float min_p = 0.0f;        // 0 = off
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f, frequency_penalty = 0.0f;
  double u = 0.0;                          // [0, 1)
  std::span<const int32_t> seen_ids;       // distinct prompt + output ids (repetition penalty)
  std::span<const int32_t> output_ids;     // distinct output ids (presence / frequency penalty)
  std::span<const int32_t> output_counts;  // their counts
  // Constrained decoding's token mask (grammar/grammar.h's layout: bit i % 32 of word i / 32 set
  // = token i allowed; ceil(vocab / 32) words), or empty for none. Disallowed tokens are never
  // drawn; a mask that allows nothing gives token 0 (the engine's matcher refuses it).
  std::span<const uint32_t> allowed;
};

// Which layer's paged K/V an attention call reads and writes.
struct KVLayer {
  void* k = nullptr;
  void* v = nullptr;
  DType dtype = DType::F32;  // one the backend supports_kv
  int64_t block_size = 0, n_kv_heads = 0, head_dim = 0;
  // F8_E4M3: the layer's dequantization scales (stored = e4m3(x / scale), read = stored * scale;
  // kernels/ref/attention_ref.h); ignored for other dtypes.
  float k_scale = 1.0f, v_scale = 1.0f;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;   // "cpu" or "cuda:N"
  // The card's model ("NVIDIA H100 80GB HBM3"), for benchmark records; "" where the CPU is the machine.
  virtual std::string device_model() const { return {}; }
  virtual bool is_cpu() const = 0;

  // Dtype of the normed activations and projection outputs the transformer asks for (the
  // residual stream, router and logits stay f32 on every backend).
  virtual DType act_dtype() const = 0;
  // The KV cache's dtype when the user chose none (--kv-cache-dtype auto, a checkpoint
  // without KV scales).
  virtual DType kv_dtype() const = 0;
  // Whether attention / rope_attention / rmsnorm_qkv_rope_cache write and read a cache of this
  // dtype (F8_E4M3: with the KVLayer's scales). The model asks before it uses one and refuses
  // with one error otherwise (Transformer::set_kv_dtype). Default: kv_dtype() only.
  virtual bool supports_kv(DType dtype) const { return dtype == kv_dtype(); }
  // Bytes the KV cache may take when the user gave no budget (GPU: --gpu-memory-utilization of
  // the card minus what is in use; CPU: -1, the engine decides from host memory).
  virtual int64_t default_kv_budget() const { return -1; }

  // Measures the device's own ceilings (GPU: copy bandwidth counting bytes read + written, bf16
  // GEMM rate); false where the caller should use the CPU probes.
  virtual bool probe(double* bandwidth_gbs, double* peak_gflops) { return false; }

  // Memory of the backend's device; alloc throws gale::Error when it runs out.
  virtual void* alloc(size_t bytes) = 0;
  virtual void release(void* p, size_t bytes) = 0;
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;  // device to device
  // Copies backend memory to the host (waits for the device). Default: memcpy on a CPU backend.
  virtual void download(void* host, const void* src, size_t bytes);
  // The host tier of the KV cache (--host-kv-cache, model/kv_cache.h): host memory the device
  // copies to and from without the host waiting (pinned on CUDA; plain pages by default), and
  // copies between it and backend memory ordered with this backend's ops: a copy issued before
  // a forward is complete before that forward's ops touch either side, and the host memory is
  // not read by the host. Defaults (CPU backend): mmap and memcpy; other backends must override.
  virtual void* alloc_host(size_t bytes);
  virtual void release_host(void* p, size_t bytes);
  virtual void copy_to_host_async(void* host_dst, const void* src, size_t bytes);
  virtual void copy_from_host_async(void* dst, const void* host_src, size_t bytes);

  // Whether linear / linear_fused (and the fused ops built on them) run a matrix stored as l
  // is: its dtype, scheme and row stride (model/weights.h). The model asks for every matrix
  // before prepare() and refuses the first that fails, by name. Default: the dense dtypes
  // (F32, F16, BF16, F8_E4M3, F8_E5M2) without scales, in packed rows, which the CPU ops read
  // in place and the CUDA backend converts to bf16 at upload.
  virtual bool supports(const Linear& l) const;

  // Once per model: upload, convert or fuse what the ops need. q/k/v and gate/up become one
  // projection each (linear_fused) where the backend can.
  virtual void prepare(const ModelConfig& cfg, const ModelWeights& w) = 0;

  // Rows the step's ops will run over: T, or more where the backend pads a decode step to a
  // batch bucket it can replay as a captured graph (padding rows are fake one-token sequences
  // whose K/V are never written and whose logits nobody reads).
  virtual int64_t padded_tokens(const StepPlan& plan) const { return plan.T(); }
  // Once per step, before the layers (plan.padded_T set).
  virtual void begin_step(const StepPlan& plan) = 0;
  // After begin_step and once every buffer of the step exists: true when the backend launched
  // a captured graph of the whole step (the caller then skips the ops and reads the logits);
  // false when the ops follow, maybe being captured, and end_step_ops() closes them.
  virtual bool replay_step() { return false; }
  virtual void end_step_ops() {}

  virtual void embedding(const ModelWeights& w, Act out) = 0;
  // out = w * in / rms(in), row by row; in and out may be the same rows.
  virtual void rmsnorm(Act in, const std::vector<float>& w, float eps, Act out) = 0;
  // Per-head RMSNorm in place (Qwen3 q/k norm): rows of n_heads * head_dim.
  virtual void head_rmsnorm(Act x, int64_t n_heads, const std::vector<float>& w, float eps) = 0;
  // out (=|+=) in · Wᵀ + bias.
  virtual void linear(const Linear& l, Act in, Act out, bool accumulate) = 0;
  // Several projections of the same input side by side: out's columns are ls[0]'s outputs,
  // then ls[1]'s, ... (q|k|v, gate|up).
  virtual void linear_fused(std::span<const Linear* const> ls, Act in, Act out) = 0;
  // out = rmsnorm(x) · [W_0; W_1; ...]ᵀ (linear_fused of ls over the normalized rows, rounded to
  // the activation dtype first). `normed` is scratch of x's shape: afterwards it holds the
  // normalized rows or nothing (a backend may fuse the norm into the product).
  virtual void rmsnorm_linear(Act x, const std::vector<float>& norm_w, float eps, Act normed,
                              std::span<const Linear* const> ls, Act out) {
    rmsnorm(x, norm_w, eps, normed);
    round_act(normed);
    linear_fused(ls, normed, out);
  }
  // out (=|+=) (silu(gate) * up) · Wᵀ, where gate_up = [gate | up] as linear_fused of (gate, up)
  // wrote it. The gate half is scratch afterwards.
  virtual void swiglu_linear(Act gate_up, const Linear& down, Act out, bool accumulate) {
    const int64_t I = gate_up.cols / 2;
    Act g = gate_up.cols_range(0, I);
    silu_mul(g, gate_up.cols_range(I, I));
    round_act(g);
    linear(down, g, out, accumulate);
  }
  // The dense gated MLP on the residual stream: out += down(silu(gate(n)) * up(n)) with
  // n = rmsnorm(x). normed ([rows, hidden]) and gate_up ([rows, 2 * intermediate]) are scratch.
  // Default: rmsnorm_linear of (gate, up), then swiglu_linear.
  virtual void swiglu_mlp(Act x, const std::vector<float>& norm_w, float eps, Act normed, Act gate_up,
                          const Linear& gate, const Linear& up, const Linear& down, Act out) {
    const Linear* proj[] = {&gate, &up};
    rmsnorm_linear(x, norm_w, eps, normed, proj, gate_up);
    swiglu_linear(gate_up, down, out, /*accumulate=*/true);
  }
  // The expert half of an MoE feed-forward, added into the residual x ([T, hidden] f32):
  //   x[t] += sum over the top_k experts e of t: w[t, e] * down_e(silu(gate_e(xn[t])) * up_e(xn[t]))
  // where router_logits ([T, num_experts] f32) = xn · routerᵀ, w = softmax over the experts in
  // f32, the top_k largest (ties: lower expert first), renormalized to sum 1 when
  // c.norm_topk_prob (Mixtral). `workspace` holds moe_workspace_bytes(c, T) bytes of backend
  // memory (sized with the step's other buffers: a backend capturing the step into a graph
  // must not allocate). Default: routing on the host (to_host of the logits), then one gather,
  // gate|up product, SiLU-mul, down product and weighted scatter-add per expert.
  virtual size_t moe_workspace_bytes(const ModelConfig& c, int64_t T) const;
  virtual void moe_experts(const ModelConfig& c, const LayerWeights& L, Act xn, Act router_logits, void* workspace,
                           Act x);
  // RoPE in place on q and k with the step's rotary tables.
  virtual void rope(Act q, int64_t n_q_heads, Act k, int64_t n_k_heads, int64_t head_dim) = 0;
  // Writes the step's K/V rows into the paged cache, then attention of every sequence's new
  // queries over its cached context (causal, GQA, sliding window when window > 0).
  virtual void attention(const KVLayer& kv, Act q, Act k, Act v, int64_t n_heads, int64_t window, float scale,
                         Act out) = 0;
  // rope(q, k) then attention(...) in one call, so that a backend may rotate k on its way
  // into the cache.
  virtual void rope_attention(const KVLayer& kv, Act q, Act k, Act v, int64_t n_heads, int64_t window, float scale,
                              Act out) {
    rope(q, n_heads, k, kv.n_kv_heads, kv.head_dim);
    round_act(q);
    attention(kv, q, k, v, n_heads, window, scale, out);
  }
  // The attention block's input in one pass where the backend can: RMSNorm of x, the q|k|v
  // projection (qkv = q, k, v, bias-free), RoPE on q and k, and k, v written into the cache.
  // Returns false (and does nothing) where it cannot; the caller then runs rmsnorm_linear and
  // rope_attention. After true, attend_cached runs the attention over what it wrote.
  virtual bool rmsnorm_qkv_rope_cache(Act x, const std::vector<float>& norm_w, float eps,
                                      std::span<const Linear* const> qkv, Act out, const KVLayer& kv) {
    return false;
  }
  // Attention of q over the cache, whose K/V of this step are written already.
  virtual void attend_cached(const KVLayer& kv, Act q, int64_t n_heads, int64_t window, float scale, Act out) {
    throw Error(name() + ": attend_cached without rmsnorm_qkv_rope_cache");
  }
  // Tensor parallelism's seam: how each block's output (the o projection, the dense MLP's
  // down projection, the experts' weighted sum) reaches the residual stream x. Where
  // partial_residuals() is false (one device) the block's last product accumulates straight
  // into x. Where true, the transformer has the block write into zeroed f32 scratch of x's
  // shape (fill_zero) and then calls reduce_add(partial, x): a tensor-parallel backend holds
  // its rank's partial sum there and all-reduces it across ranks before the add. The CPU
  // backend implements both as one rank (tests run the model through the seam); elsewhere the
  // defaults throw.
  virtual bool partial_residuals() const { return false; }
  virtual void fill_zero(Act x);
  virtual void reduce_add(Act partial, Act x);
  // The vocabulary-parallel LM head's seam: part ([rows, n_r] f32) holds this rank's columns
  // shard_range(full.cols, rank, ranks) (comm/comm.h) of the logits; afterwards full ([rows,
  // full.cols] f32) holds every rank's, on every rank. The transformer calls it where the LM
  // head has fewer rows than the vocabulary (model/transforms.h shard_tensor_parallel). Default
  // throws (one device never shards).
  virtual void all_gather_columns(Act part, Act full);
  // Pipeline parallelism's seam: this backend runs stage pipeline_stage() of
  // pipeline_stages() (its layers only: model/transforms.h split_pipeline_layers). The first
  // stage embeds the tokens, the others receive the residual stream x ([T, hidden] f32) from
  // the stage before (recv_from_stage); every stage but the last sends its x on; the last
  // computes the logits and sends them to stage 0, which returns them. Defaults: one stage,
  // and the transfers throw.
  virtual int pipeline_stage() const { return 0; }
  virtual int pipeline_stages() const { return 1; }
  virtual void send_to_stage(Act x, int stage);
  virtual void recv_from_stage(Act x, int stage);
  // gate = silu(gate) * up (in place).
  virtual void silu_mul(Act gate, Act up) = 0;
  // Rounds f32 activations to bf16 in place (`--dtype bf16` on the CPU); no-op where the
  // activations are bf16 already.
  virtual void round_act(Act x) {}
  // dst[i] = src[rows[i]]; src and dst share the dtype.
  virtual void gather_rows(Act src, std::span<const int32_t> rows, Act dst) = 0;
  // The step plan's logit rows of src, in order (device-side list prepared by begin_step).
  virtual void gather_logit_rows(Act src, Act dst) = 0;
  // dst[rows[i]] += weight[i] * src[i]; rows distinct; dst f32.
  virtual void scatter_add_rows(Act src, std::span<const int32_t> rows, std::span<const float> weight, Act dst) = 0;
  // Copies f32 rows to the host (waits for the device).
  virtual void to_host(Act src, float* dst) = 0;
  // out[r] = argmax of row r of f32 logits (first maximum on ties), on the host (waits).
  virtual void argmax_rows(Act logits, int32_t* out) = 0;
  // Whether sample_rows runs where the logits are. The CPU backend says no: its logits are
  // host memory already, and the engine runs the Sampler on them (the same tokens as ever).
  virtual bool has_sample_rows() const { return false; }
  // out[r] = the token drawn from f32 logit row r as rows[r] says, with Sampler::sample's
  // filters and distribution (penalties are applied to the logits in place); on the host (waits).
  virtual void sample_rows(Act logits, std::span<const RowSampling> rows, int32_t* out);

  // The two halves of argmax_rows / sample_rows, so that the host may work while the device
  // runs the step: a launch queues the ids' computation and their copy into host memory the
  // backend owns, and returns; wait_ids() blocks until they arrived and copies them to out
  // (one per row of the launch). One launch at a time: every launch is waited for before the
  // next step begins. The penalty lists of `rows` are read before launch_sample_rows returns.
  // Default (CPU): the synchronous call at launch, nothing to wait for.
  virtual void launch_argmax_rows(Act logits);
  virtual void launch_sample_rows(Act logits, std::span<const RowSampling> rows);
  virtual void wait_ids(int32_t* out);

 private:
  std::vector<int32_t> launched_ids_;  // the default launches' results
};

}  // namespace gale
