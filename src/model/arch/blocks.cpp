#include "model/arch/blocks.h"

namespace gale {

void bind_norms(TensorBinder& b, const ModelConfig& c, const std::string& p, LayerWeights& L) {
  L.attn_norm = b.vec(p + "input_layernorm.weight", c.hidden_size);
  L.ffn_norm = b.vec(p + "post_attention_layernorm.weight", c.hidden_size);
}

namespace {

// A quantized checkpoint's KV cache scales (compressed-tensors kv_cache_scheme).
void bind_kv_scales(TensorBinder& b, const ModelConfig& c, const std::string& p, LayerWeights& L) {
  if (!c.quant.kv_scales) return;
  L.k_scale = b.optional_scalar(p + "self_attn.k_scale");
  L.v_scale = b.optional_scalar(p + "self_attn.v_scale");
}

}  // namespace

void bind_attention(TensorBinder& b, const ModelConfig& c, const std::string& p, LayerWeights& L) {
  const int64_t H = c.hidden_size, hd = c.head_dim;
  L.q = b.linear(p + "self_attn.q_proj", c.num_heads * hd, H, c.qkv_bias);
  L.k = b.linear(p + "self_attn.k_proj", c.num_kv_heads * hd, H, c.qkv_bias);
  L.v = b.linear(p + "self_attn.v_proj", c.num_kv_heads * hd, H, c.qkv_bias);
  L.o = b.linear(p + "self_attn.o_proj", H, c.num_heads * hd, c.o_bias);
  bind_kv_scales(b, c, p, L);
  if (c.qk_norm) {
    L.q_norm = b.vec(p + "self_attn.q_norm.weight", hd);
    L.k_norm = b.vec(p + "self_attn.k_norm.weight", hd);
  }
}

void bind_fused_attention(TensorBinder& b, const ModelConfig& c, const std::string& p, const std::string& fused,
                          LayerWeights& L) {
  const int64_t H = c.hidden_size, q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
  const Linear qkv = b.linear(p + "self_attn." + fused, q + 2 * kv, H, c.qkv_bias);
  L.q = qkv.rows_view(0, q);
  L.k = qkv.rows_view(q, kv);
  L.v = qkv.rows_view(q + kv, kv);
  L.o = b.linear(p + "self_attn.o_proj", H, q, c.o_bias);
  bind_kv_scales(b, c, p, L);
}

void bind_mlp(TensorBinder& b, const ModelConfig& c, const std::string& p, LayerWeights& L) {
  const int64_t H = c.hidden_size, I = c.intermediate_size;
  L.gate = b.linear(p + "mlp.gate_proj", I, H, c.mlp_bias);
  L.up = b.linear(p + "mlp.up_proj", I, H, c.mlp_bias);
  L.down = b.linear(p + "mlp.down_proj", H, I, c.mlp_bias);
}

void bind_fused_mlp(TensorBinder& b, const ModelConfig& c, const std::string& p, const std::string& fused,
                    LayerWeights& L) {
  const int64_t H = c.hidden_size, I = c.intermediate_size;
  const Linear gate_up = b.linear(p + "mlp." + fused, 2 * I, H, c.mlp_bias);
  L.gate = gate_up.rows_view(0, I);
  L.up = gate_up.rows_view(I, I);
  L.down = b.linear(p + "mlp.down_proj", H, I, c.mlp_bias);
}

void bind_moe(TensorBinder& b, const ModelConfig& c, const std::string& p, const MoeNames& n, LayerWeights& L) {
  const int64_t H = c.hidden_size, I = c.intermediate_size;
  const std::string bp = p + n.block + ".";
  L.router = b.linear(bp + n.router, c.num_experts, H, false);
  L.experts.resize(size_t(c.num_experts));
  for (int64_t e = 0; e < c.num_experts; ++e) {
    const std::string ep = bp + "experts." + std::to_string(e) + ".";
    L.experts[size_t(e)].gate = b.linear(ep + n.gate, I, H, false);
    L.experts[size_t(e)].down = b.linear(ep + n.down, H, I, false);
    L.experts[size_t(e)].up = b.linear(ep + n.up, I, H, false);
  }
}

void bind_dense_layer(TensorBinder& b, const ModelConfig& c, const std::string& p, LayerWeights& L) {
  bind_norms(b, c, p, L);
  bind_attention(b, c, p, L);
  bind_mlp(b, c, p, L);
}

void window_all_layers(const ConfigReader& r, ModelConfig& c) {
  if (!r.has("layer_types"))
    for (auto& w : c.layer_window) w = c.sliding_window;
}

void read_attention_bias(const ConfigReader& r, ModelConfig& c) {
  c.qkv_bias = c.o_bias = r.boolean_or("attention_bias", false);
}

}  // namespace gale
