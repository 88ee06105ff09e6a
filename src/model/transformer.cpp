#include "model/transformer.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "model/cpu_backend.h"
#include "model/rope.h"

namespace gale {

namespace {

// Loading's last check before prepare: the backend runs every matrix as it is stored, or the
// model is refused naming the first that it cannot (a scheme no kernel of it reads).
void check_supported(const Backend& be, const ModelWeights& w) {
  for_each_linear(w, [&](const Linear& l) {
    if (!be.supports(l))
      throw Error("weight '" + (l.name.empty() ? std::string("(unnamed)") : l.name) + "' is stored as " +
                  describe_storage(l) + ", which the " + be.name() + " backend cannot run");
  });
}

}  // namespace

Transformer::Transformer(ModelConfig cfg, ModelWeights w, ActDType act, std::unique_ptr<Backend> backend)
    : cfg_(std::move(cfg)), w_(std::move(w)), act_(act), backend_(std::move(backend)) {
  rot_dim_ = int64_t(double(cfg_.head_dim) * cfg_.rope.partial_rotary_factor);
  if (!backend_) backend_ = std::make_unique<CpuBackend>(act == ActDType::BF16);
  check_supported(*backend_, w_);
  backend_->prepare(cfg_, w_);
  kv_format_.dtype = backend_->kv_dtype();
}

namespace {

// The E4M3 KV scales when the checkpoint has none (ARCHITECTURE.md, "FP8 KV cache"): one
// forward over kCalibrationTokens fixed tokens (the BOS token, then ids drawn by splitmix64
// from a fixed seed: no tokenizer below the engine, and the same scales on every machine),
// each layer's largest |K| (after RoPE) and |V| measured, and scale = amax * kKvHeadroom / 448.
// E4M3 is a float: its relative step is 2^-3 from 2^-6 to 448, so the headroom costs only the
// values below amax * headroom / 2^14.8 (nothing an attention sum notices), while anything up to
// headroom x the calibration's amax is stored without clipping.
constexpr int64_t kCalibrationTokens = 128;
constexpr float kKvHeadroom = 4.0f;

float amax_of(const std::vector<uint8_t>& bytes, DType dt) {
  float m = 0.0f;
  const size_t n = bytes.size() / dtype_size(dt);
  for (size_t i = 0; i < n; ++i) m = std::max(m, std::fabs(load_as_f32(bytes.data(), dt, i)));
  return m;
}

}  // namespace

void Transformer::calibrate_kv_scales(std::vector<float>& k_scale, std::vector<float>& v_scale) {
  const ModelConfig& c = cfg_;
  const int64_t bs = 16, n = kCalibrationTokens, nb = (n + bs - 1) / bs;
  std::vector<int32_t> tokens(static_cast<size_t>(n)), table(static_cast<size_t>(nb));
  uint64_t state = 0x243f6a8885a308d3ull;
  for (int32_t& t : tokens) {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    t = int32_t((z ^ (z >> 31)) % uint64_t(c.vocab_size));
  }
  if (c.bos_token_id && *c.bos_token_id >= 0 && *c.bos_token_id < c.vocab_size) tokens[0] = *c.bos_token_id;
  for (int64_t b = 0; b < nb; ++b) table[size_t(b)] = int32_t(b);
  const DType dt = backend_->kv_dtype();
  KVCache kv(c, nb, bs, dt, backend_.get());
  SeqStep s{tokens, 0, table, SeqStep::Logits::None};
  std::vector<float> logits;
  forward({&s, 1}, kv, logits);
  // Blocks 0.. hold the n tokens in order: the first n rows of each layer's K and V.
  std::vector<uint8_t> bytes(size_t(n * c.num_kv_heads * c.head_dim) * dtype_size(dt));
  k_scale.assign(size_t(c.num_layers), 1.0f);
  v_scale.assign(size_t(c.num_layers), 1.0f);
  for (int64_t l = 0; l < c.num_layers; ++l)
    for (int kv_i = 0; kv_i < 2; ++kv_i) {
      backend_->download(bytes.data(), kv_i ? kv.v(l) : kv.k(l), bytes.size());
      const float amax = amax_of(bytes, dt);
      // An all-zero (or non-finite) layer keeps scale 1.
      if (amax > 0.0f && std::isfinite(amax)) (kv_i ? v_scale : k_scale)[size_t(l)] = amax * kKvHeadroom / kF8E4M3Max;
    }
}

void Transformer::set_kv_dtype(DType dtype) {
  GALE_ASSERT(!launched());
  if (!backend_->supports_kv(dtype))
    throw Error("the " + backend_->name() + " backend cannot keep the KV cache in " + std::string(dtype_name(dtype)));
  KVFormat f{dtype, {}, {}};
  std::string source;
  if (dtype == DType::F8_E4M3) {
    const bool stored = std::all_of(w_.layers.begin(), w_.layers.end(), [](const LayerWeights& L) {
      return L.k_scale > 0.0f && std::isfinite(L.k_scale) && L.v_scale > 0.0f && std::isfinite(L.v_scale);
    });
    if (stored) {
      for (const LayerWeights& L : w_.layers) {
        f.k_scale.push_back(L.k_scale);
        f.v_scale.push_back(L.v_scale);
      }
      source = "checkpoint";
    } else {
      kv_format_ = KVFormat{backend_->kv_dtype(), {}, {}};  // the calibration runs in the backend's own dtype
      calibrate_kv_scales(f.k_scale, f.v_scale);
      source = "calibrated";
    }
  }
  kv_format_ = std::move(f);
  kv_scale_source_ = source;
}

Transformer::~Transformer() {
  for (Buffer* b : {&bx_, &bxn_, &bqkv_, &battn_, &bgu_, &brouter_, &bmoe_ws_, &bpartial_, &blogit_x_,
                    &blogit_n_, &blogits_, &blogits_part_})
    if (b->p) backend_->release(b->p, b->bytes);
}

Act Transformer::buffer(Buffer& b, int64_t rows, int64_t cols, DType dt) {
  const size_t need = size_t(rows * cols) * dtype_size(dt);
  if (need > b.bytes) {
    // Grow by half again, so a slowly rising batch does not reallocate every step.
    const size_t bytes = std::max(need, b.bytes + b.bytes / 2);
    if (b.p) backend_->release(b.p, b.bytes);
    b.p = nullptr;
    b.bytes = 0;
    b.p = backend_->alloc(bytes);
    b.bytes = bytes;
  }
  return {b.p, dt, rows, cols, cols};
}

void Transformer::build_plan(std::span<const SeqStep> seqs, int64_t T, int64_t block_size) {
  const ModelConfig& c = cfg_;
  StepPlan& p = plan_;
  p.seqs.clear();
  p.tokens.clear();
  p.logit_rows.clear();
  p.rot_dim = rot_dim_;
  p.block_size = block_size;
  p.cos.resize(size_t(T * rot_dim_ / 2));
  p.sin.resize(size_t(T * rot_dim_ / 2));
  if (pos_.size() < size_t(T)) pos_.resize(size_t(T));
  int64_t t0 = 0;
  for (const SeqStep& s : seqs) {
    const int64_t n = int64_t(s.tokens.size());
    p.seqs.push_back({t0, n, s.start_pos, s.block_table});
    p.tokens.insert(p.tokens.end(), s.tokens.begin(), s.tokens.end());
    for (int64_t i = 0; i < n; ++i) pos_[size_t(t0 + i)] = s.start_pos + i;
    // Rotary tables per sequence: "dynamic" scaling depends on the sequence's length.
    RopeFrequencies f = rope_frequencies(c.rope, rot_dim_, std::max(s.start_pos + n, s.rope_len));
    rope_cos_sin(f, pos_.data() + t0, n, p.cos.data() + t0 * rot_dim_ / 2, p.sin.data() + t0 * rot_dim_ / 2);
    if (s.logits == SeqStep::Logits::All)
      for (int64_t i = 0; i < n; ++i) p.logit_rows.push_back(int32_t(t0 + i));
    else if (s.logits == SeqStep::Logits::Last && n > 0)
      p.logit_rows.push_back(int32_t(t0 + n - 1));
    t0 += n;
  }
}

void Transformer::forward(std::span<const SeqStep> seqs, KVCache& kv, std::vector<float>& logits) {
  Act out = run(seqs, kv, &logits);
  if (out.rows == 0) {
    logits.clear();
    return;
  }
  if (out.data != logits.data()) {
    logits.resize(size_t(out.rows * out.cols));
    backend_->to_host(out, logits.data());
  }
}

void Transformer::forward_argmax(std::span<const SeqStep> seqs, KVCache& kv, std::vector<int32_t>& ids) {
  launch_argmax(seqs, kv);
  wait_ids(ids);
}

void Transformer::forward_sample(std::span<const SeqStep> seqs, KVCache& kv, std::span<const RowSampling> rows,
                                 std::vector<int32_t>& ids) {
  launch_sample(seqs, kv, rows);
  wait_ids(ids);
}

void Transformer::launch_argmax(std::span<const SeqStep> seqs, KVCache& kv) {
  Act out = run(seqs, kv, nullptr);
  if (out.rows > 0) backend_->launch_argmax_rows(out);
  launched_rows_ = out.rows;
}

void Transformer::launch_sample(std::span<const SeqStep> seqs, KVCache& kv, std::span<const RowSampling> rows) {
  Act out = run(seqs, kv, nullptr);
  GALE_ASSERT(size_t(out.rows) == rows.size());
  if (out.rows > 0) backend_->launch_sample_rows(out, rows);
  launched_rows_ = out.rows;
}

void Transformer::wait_ids(std::vector<int32_t>& ids) {
  GALE_ASSERT(launched());
  ids.resize(size_t(launched_rows_));
  const bool any = launched_rows_ > 0;
  launched_rows_ = -1;  // waited for, even when the wait throws
  if (any) backend_->wait_ids(ids.data());
}

Act Transformer::run(std::span<const SeqStep> seqs, KVCache& kv, std::vector<float>* host) {
  const ModelConfig& c = cfg_;
  const int64_t H = c.hidden_size;
  GALE_ASSERT(kv.device() == (backend_->is_cpu() ? nullptr : backend_.get()));
  GALE_ASSERT(backend_->supports_kv(kv.dtype()));
  GALE_ASSERT(kv.dtype() != DType::F8_E4M3 || kv.format().k_scale.size() == size_t(c.num_layers));
  GALE_ASSERT(!launched());  // a launched pass is waited for before the next one
  int64_t T = 0;
  for (const SeqStep& s : seqs) {
    for (int32_t id : s.tokens)
      if (id < 0 || id >= c.vocab_size)
        throw Error("token id " + std::to_string(id) + " is out of range (vocabulary size " +
                    std::to_string(c.vocab_size) + ")");
    int64_t need_blocks = (s.start_pos + int64_t(s.tokens.size()) + kv.block_size() - 1) / kv.block_size();
    GALE_ASSERT(int64_t(s.block_table.size()) >= need_blocks);
    T += int64_t(s.tokens.size());
  }
  if (T == 0) return {};
  Backend& be = *backend_;
  build_plan(seqs, T, kv.block_size());
  plan_.kv_base = kv.k(0);
  // A backend replaying captured graphs may pad the step to a bucket of rows (padding rows
  // are logit rows too, so the real rows come first in every buffer).
  const int64_t Tp = be.padded_tokens(plan_);
  GALE_ASSERT(Tp >= T);
  plan_.padded_T = Tp;
  const int64_t R = int64_t(plan_.logit_rows.size()), Rp = R + (Tp - T), V = c.vocab_size;
  be.begin_step(plan_);
  // Every buffer of the step is sized before the first op: nothing may be allocated while a
  // backend captures the step into a graph.
  const int64_t qd = c.num_heads * c.head_dim, kvd = c.num_kv_heads * c.head_dim;
  x_ = buffer(bx_, Tp, H, DType::F32);
  xn_ = buffer(bxn_, Tp, H, be.act_dtype());
  buffer(bqkv_, Tp, qd + 2 * kvd, be.act_dtype());
  buffer(battn_, Tp, qd, be.act_dtype());
  if (c.num_experts == 0) {
    buffer(bgu_, Tp, 2 * c.intermediate_size, be.act_dtype());
  } else {
    buffer(brouter_, Tp, c.num_experts, DType::F32);
    const size_t ws = be.moe_workspace_bytes(c, Tp);
    buffer(bmoe_ws_, int64_t((ws + 3) / 4), 1, DType::F32);
  }
  if (be.partial_residuals()) buffer(bpartial_, Tp, H, DType::F32);
  Act rows = buffer(blogit_x_, Rp, H, DType::F32);
  Act normed = buffer(blogit_n_, Rp, H, be.act_dtype());
  if (w_.lm_head.out != V) buffer(blogits_part_, Rp, w_.lm_head.out, DType::F32);
  Act out;
  if (be.is_cpu() && host) {  // logits straight into the caller's vector
    host->resize(size_t(Rp * V));
    out = Act{host->data(), DType::F32, Rp, V, V};
  } else if (Rp > 0) {
    out = buffer(blogits_, Rp, V, DType::F32);
  }
  const int stage = be.pipeline_stage(), stages = be.pipeline_stages();
  if (stages > 1) {  // a pipeline stage: its layers between the stages' transfers
    GALE_ASSERT(!be.replay_step());
    if (stage == 0) {
      be.embedding(w_, x_);
      be.round_act(x_);
    } else {
      be.recv_from_stage(x_, stage - 1);
    }
    layers(Tp, kv);
    if (stage + 1 < stages) be.send_to_stage(x_, stage + 1);
    if (Rp > 0) {
      if (stage + 1 == stages) {
        logits_from(rows, normed, out);
        be.send_to_stage(out, 0);
      } else if (stage == 0) {
        be.recv_from_stage(out, stages - 1);
      }
    }
    if (R == 0) return {};
    out.rows = R;
    return out;
  }
  if (!be.replay_step()) {  // else a captured graph of this step shape ran everything below
    be.embedding(w_, x_);
    be.round_act(x_);
    layers(Tp, kv);
    // Final norm and LM head only for the rows whose logits were asked for.
    if (Rp > 0) logits_from(rows, normed, out);
    be.end_step_ops();
  }
  if (R == 0) return {};
  out.rows = R;  // the real rows (padding rows follow them)
  return out;
}

void Transformer::layers(int64_t T, KVCache& kv) {
  const ModelConfig& c = cfg_;
  Backend& be = *backend_;
  const float eps = float(c.rms_norm_eps);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const LayerWeights& L = w_.layers[size_t(l)];
    attention_block(l, kv, T);
    if (c.num_experts > 0) {
      be.rmsnorm(x_, L.ffn_norm, eps, xn_);  // the router and the experts' gathers read xn_
      be.round_act(xn_);
      moe_block(L, T);
    } else {
      mlp_block(L);
    }
    be.round_act(x_);
  }
}

void Transformer::logits_from(Act rows, Act normed, Act out) {
  Backend& be = *backend_;
  be.gather_logit_rows(x_, rows);
  be.rmsnorm(rows, w_.final_norm, float(cfg_.rms_norm_eps), normed);
  be.round_act(normed);
  if (w_.lm_head.out == cfg_.vocab_size) {
    be.linear(w_.lm_head, normed, out, false);
  } else {  // a vocabulary-parallel shard of the head: this rank's columns, then every rank's
    Act part = buffer(blogits_part_, rows.rows, w_.lm_head.out, DType::F32);
    be.linear(w_.lm_head, normed, part, false);
    be.all_gather_columns(part, out);
  }
}

void Transformer::attention_block(int64_t l, KVCache& kv, int64_t T) {
  const ModelConfig& c = cfg_;
  Backend& be = *backend_;
  const LayerWeights& L = w_.layers[size_t(l)];
  const int64_t hd = c.head_dim, qd = c.num_heads * hd, kvd = c.num_kv_heads * hd;
  Act qkv = buffer(bqkv_, T, qd + 2 * kvd, be.act_dtype());
  const Linear* proj[] = {&L.q, &L.k, &L.v};
  const KVLayer kvl{kv.k(l), kv.v(l), kv.dtype(), kv.block_size(), c.num_kv_heads, hd, kv.k_scale(l), kv.v_scale(l)};
  const float eps = float(c.rms_norm_eps), scale = 1.0f / std::sqrt(float(hd));
  const int64_t window = c.layer_window[size_t(l)];
  Act q = qkv.cols_range(0, qd), k = qkv.cols_range(qd, kvd), v = qkv.cols_range(qd + kvd, kvd);
  Act attn = buffer(battn_, T, qd, be.act_dtype());
  if (!c.qk_norm && be.rmsnorm_qkv_rope_cache(x_, L.attn_norm, eps, proj, qkv, kvl)) {
    be.attend_cached(kvl, q, c.num_heads, window, scale, attn);
  } else {
    be.rmsnorm_linear(x_, L.attn_norm, eps, xn_, proj, qkv);
    if (c.qk_norm) {  // per-head RMSNorm before RoPE (Qwen3)
      be.head_rmsnorm(q, c.num_heads, L.q_norm, eps);
      be.head_rmsnorm(k, c.num_kv_heads, L.k_norm, eps);
    }
    be.rope_attention(kvl, q, k, v, c.num_heads, window, scale, attn);
  }
  be.round_act(attn);
  if (!be.partial_residuals()) {
    be.linear(L.o, attn, x_, /*accumulate=*/true);  // residual add
    return;
  }
  Act part = buffer(bpartial_, T, c.hidden_size, DType::F32);
  be.linear(L.o, attn, part, /*accumulate=*/false);
  be.reduce_add(part, x_);
}

Act Transformer::zeroed_partial() {
  Act part = buffer(bpartial_, x_.rows, cfg_.hidden_size, DType::F32);
  backend_->fill_zero(part);
  return part;
}

void Transformer::mlp_block(const LayerWeights& L) {
  Backend& be = *backend_;
  Act gu = buffer(bgu_, x_.rows, 2 * cfg_.intermediate_size, be.act_dtype());
  const bool partial = be.partial_residuals();
  Act out = partial ? zeroed_partial() : x_;
  be.swiglu_mlp(x_, L.ffn_norm, float(cfg_.rms_norm_eps), xn_, gu, L.gate, L.up, L.down, out);  // out += mlp
  if (partial) be.reduce_add(out, x_);
}

void Transformer::moe_block(const LayerWeights& L, int64_t T) {
  const ModelConfig& c = cfg_;
  Backend& be = *backend_;
  Act router = buffer(brouter_, T, c.num_experts, DType::F32);
  be.linear(L.router, xn_, router, false);
  const bool partial = be.partial_residuals();
  Act out = partial ? zeroed_partial() : x_;
  be.moe_experts(c, L, xn_, router, bmoe_ws_.p, out);  // out += experts
  if (partial) be.reduce_add(out, x_);
}

}  // namespace gale
