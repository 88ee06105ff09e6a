#include "model/transformer.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/ops.h"
#include "model/rope.h"

namespace gale {

namespace {

void grow(std::vector<float>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

// y[T, out] (=|+=) x[T, in] · Wᵀ + b
void linear(const Linear& l, const float* x, int64_t T, float* y, bool accumulate = false) {
  cpu::matmul(x, l.in, T, l.in, l.w, l.dtype, l.out, l.bias.empty() ? nullptr : l.bias.data(), y, l.out, accumulate);
}

}  // namespace

Transformer::Transformer(ModelConfig cfg, ModelWeights w, ActDType act)
    : cfg_(std::move(cfg)), w_(std::move(w)), act_(act) {
  rot_dim_ = int64_t(double(cfg_.head_dim) * cfg_.rope.partial_rotary_factor);
}

void Transformer::forward(std::span<const SeqStep> seqs, KVCache& kv, std::vector<float>& logits) {
  const ModelConfig& c = cfg_;
  const int64_t H = c.hidden_size;
  int64_t T = 0, n_logit_rows = 0;
  for (const SeqStep& s : seqs) {
    for (int32_t id : s.tokens)
      if (id < 0 || id >= c.vocab_size)
        throw Error("token id " + std::to_string(id) + " is out of range (vocabulary size " +
                    std::to_string(c.vocab_size) + ")");
    int64_t need_blocks = (s.start_pos + int64_t(s.tokens.size()) + kv.block_size() - 1) / kv.block_size();
    GALE_ASSERT(int64_t(s.block_table.size()) >= need_blocks);
    T += int64_t(s.tokens.size());
    n_logit_rows += s.logits == SeqStep::Logits::All ? int64_t(s.tokens.size())
                    : s.logits == SeqStep::Logits::Last && !s.tokens.empty() ? 1 : 0;
  }
  if (T == 0) {
    logits.clear();
    return;
  }
  const int64_t qd = c.num_heads * c.head_dim, kvd = c.num_kv_heads * c.head_dim;
  grow(x_, size_t(T * H));
  grow(xn_, size_t(T * H));
  grow(q_, size_t(T * qd));
  grow(k_, size_t(T * kvd));
  grow(v_, size_t(T * kvd));
  grow(attn_, size_t(T * qd));
  grow(cos_, size_t(T * rot_dim_ / 2));
  grow(sin_, size_t(T * rot_dim_ / 2));
  if (pos_.size() < size_t(T)) pos_.resize(size_t(T));

  // Embeddings, positions and the rotary tables of every new token.
  int64_t t0 = 0;
  for (const SeqStep& s : seqs) {
    const int64_t n = int64_t(s.tokens.size());
    cpu::embedding(s.tokens.data(), n, w_.embed, w_.embed_dtype, H, x_.data() + t0 * H);
    for (int64_t i = 0; i < n; ++i) pos_[size_t(t0 + i)] = s.start_pos + i;
    RopeFrequencies f = rope_frequencies(c.rope, rot_dim_, s.start_pos + n);
    rope_cos_sin(f, pos_.data() + t0, n, cos_.data() + t0 * rot_dim_ / 2, sin_.data() + t0 * rot_dim_ / 2);
    t0 += n;
  }
  if (act_ == ActDType::BF16) cpu::round_to_bf16(x_.data(), T * H);

  for (int64_t l = 0; l < c.num_layers; ++l) {
    const LayerWeights& L = w_.layers[size_t(l)];
    cpu::rmsnorm(x_.data(), H, T, H, L.attn_norm.data(), float(c.rms_norm_eps), xn_.data(), H);
    if (act_ == ActDType::BF16) cpu::round_to_bf16(xn_.data(), T * H);
    attention_block(l, seqs, kv, T);
    cpu::rmsnorm(x_.data(), H, T, H, L.ffn_norm.data(), float(c.rms_norm_eps), xn_.data(), H);
    if (act_ == ActDType::BF16) cpu::round_to_bf16(xn_.data(), T * H);
    if (c.num_experts > 0) moe_block(L, T);
    else mlp_block(L, T);
    if (act_ == ActDType::BF16) cpu::round_to_bf16(x_.data(), T * H);
  }

  // Final norm and LM head only for the rows whose logits were asked for.
  grow(tmp_, size_t(n_logit_rows * H));
  int64_t row = 0;
  t0 = 0;
  for (const SeqStep& s : seqs) {
    const int64_t n = int64_t(s.tokens.size());
    if (s.logits == SeqStep::Logits::All) {
      cpu::rmsnorm(x_.data() + t0 * H, H, n, H, w_.final_norm.data(), float(c.rms_norm_eps), tmp_.data() + row * H, H);
      row += n;
    } else if (s.logits == SeqStep::Logits::Last && n > 0) {
      cpu::rmsnorm(x_.data() + (t0 + n - 1) * H, H, 1, H, w_.final_norm.data(), float(c.rms_norm_eps),
                   tmp_.data() + row * H, H);
      row += 1;
    }
    t0 += n;
  }
  if (act_ == ActDType::BF16) cpu::round_to_bf16(tmp_.data(), n_logit_rows * H);
  logits.resize(size_t(n_logit_rows * c.vocab_size));
  if (n_logit_rows > 0) linear(w_.lm_head, tmp_.data(), n_logit_rows, logits.data());
}

void Transformer::attention_block(int64_t l, std::span<const SeqStep> seqs, KVCache& kv, int64_t T) {
  const ModelConfig& c = cfg_;
  const LayerWeights& L = w_.layers[size_t(l)];
  const int64_t hd = c.head_dim, qd = c.num_heads * hd, kvd = c.num_kv_heads * hd;
  linear(L.q, xn_.data(), T, q_.data());
  linear(L.k, xn_.data(), T, k_.data());
  linear(L.v, xn_.data(), T, v_.data());
  if (c.qk_norm) {  // per-head RMSNorm before RoPE (Qwen3)
    cpu::rmsnorm(q_.data(), hd, T * c.num_heads, hd, L.q_norm.data(), float(c.rms_norm_eps), q_.data(), hd);
    cpu::rmsnorm(k_.data(), hd, T * c.num_kv_heads, hd, L.k_norm.data(), float(c.rms_norm_eps), k_.data(), hd);
  }
  cpu::rope_apply(q_.data(), qd, T, c.num_heads, hd, rot_dim_, cos_.data(), sin_.data());
  cpu::rope_apply(k_.data(), kvd, T, c.num_kv_heads, hd, rot_dim_, cos_.data(), sin_.data());
  if (act_ == ActDType::BF16) cpu::round_to_bf16(q_.data(), T * qd);

  const float scale = 1.0f / std::sqrt(float(hd));
  const cpu::PagedKV pkv{kv.k(l), kv.v(l), kv.dtype(), kv.block_size(), c.num_kv_heads, hd};
  int64_t t0 = 0;
  for (const SeqStep& s : seqs) {
    const int64_t n = int64_t(s.tokens.size());
    cpu::paged_kv_write(k_.data() + t0 * kvd, kvd, v_.data() + t0 * kvd, kvd, n, s.start_pos, kv.k(l), kv.v(l),
                        kv.dtype(), kv.block_size(), c.num_kv_heads, hd, s.block_table);
    cpu::paged_attention(q_.data() + t0 * qd, qd, n, c.num_heads, s.start_pos, pkv, s.block_table,
                         c.layer_window[size_t(l)], scale, attn_.data() + t0 * qd, qd);
    t0 += n;
  }
  if (act_ == ActDType::BF16) cpu::round_to_bf16(attn_.data(), T * qd);
  linear(L.o, attn_.data(), T, x_.data(), /*accumulate=*/true);  // residual add
}

void Transformer::mlp_block(const LayerWeights& L, int64_t T) {
  const int64_t I = cfg_.intermediate_size;
  grow(gate_, size_t(T * I));
  grow(up_, size_t(T * I));
  linear(L.gate, xn_.data(), T, gate_.data());
  linear(L.up, xn_.data(), T, up_.data());
  cpu::silu_mul(gate_.data(), I, up_.data(), I, T, I);
  if (act_ == ActDType::BF16) cpu::round_to_bf16(gate_.data(), T * I);
  linear(L.down, gate_.data(), T, x_.data(), /*accumulate=*/true);  // residual add
}

void Transformer::moe_block(const LayerWeights& L, int64_t T) {
  const ModelConfig& c = cfg_;
  const int64_t H = c.hidden_size, I = c.intermediate_size, E = c.num_experts, K = c.num_experts_per_tok;
  // Routing: softmax over experts in f32, top-k, renormalize (Mixtral).
  std::vector<float> router(static_cast<size_t>(T * E));
  linear(L.router, xn_.data(), T, router.data());
  std::vector<std::vector<std::pair<int64_t, float>>> assigned(static_cast<size_t>(E));  // expert -> (token, weight)
  std::vector<int64_t> order(static_cast<size_t>(E));
  for (int64_t t = 0; t < T; ++t) {
    float* r = router.data() + t * E;
    float m = *std::max_element(r, r + E), sum = 0;
    for (int64_t e = 0; e < E; ++e) sum += (r[e] = std::exp(r[e] - m));
    for (int64_t e = 0; e < E; ++e) r[e] /= sum;
    for (int64_t e = 0; e < E; ++e) order[size_t(e)] = e;
    std::partial_sort(order.begin(), order.begin() + K, order.end(), [&](int64_t a, int64_t b) {
      return r[a] > r[b] || (r[a] == r[b] && a < b);
    });
    float topsum = 0;
    for (int64_t k = 0; k < K; ++k) topsum += r[order[size_t(k)]];
    for (int64_t k = 0; k < K; ++k) {
      int64_t e = order[size_t(k)];
      assigned[size_t(e)].push_back({t, c.norm_topk_prob ? r[e] / topsum : r[e]});
    }
  }
  // Each expert runs once over the tokens routed to it (a grouped GEMM in spirit).
  for (int64_t e = 0; e < E; ++e) {
    const auto& toks = assigned[size_t(e)];
    if (toks.empty()) continue;
    const int64_t n = int64_t(toks.size());
    const ExpertWeights& X = L.experts[size_t(e)];
    grow(tmp_, size_t(n * H));
    grow(gate_, size_t(n * I));
    grow(up_, size_t(n * I));
    for (int64_t i = 0; i < n; ++i)
      std::copy_n(xn_.data() + toks[size_t(i)].first * H, H, tmp_.data() + i * H);
    linear(X.gate, tmp_.data(), n, gate_.data());
    linear(X.up, tmp_.data(), n, up_.data());
    cpu::silu_mul(gate_.data(), I, up_.data(), I, n, I);
    if (act_ == ActDType::BF16) cpu::round_to_bf16(gate_.data(), n * I);
    linear(X.down, gate_.data(), n, tmp_.data());
    for (int64_t i = 0; i < n; ++i)
      cpu::axpy_f32(toks[size_t(i)].second, tmp_.data() + i * H, x_.data() + toks[size_t(i)].first * H, H);
  }
}

}  // namespace gale
