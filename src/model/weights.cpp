#include "model/weights.h"

#include <set>
#include <unordered_set>

#include "core/error.h"
#include "loader/checkpoint_check.h"
#include "loader/safetensors.h"

namespace gale {

namespace {

bool is_float_dtype(DType t) {
  return t == DType::F32 || t == DType::F16 || t == DType::BF16 || t == DType::F8_E4M3 || t == DType::F8_E5M2;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

struct Binder {
  const SafeTensors& st;
  std::set<std::string> dtypes;
  std::unordered_set<std::string> bound;  // names bound so far, for check_unbound_tensors
  size_t bytes = 0;

  const TensorInfo& tensor(const std::string& name, std::vector<int64_t> shape) {
    const TensorInfo& t = st.get(name);
    if (!is_float_dtype(t.dtype))
      throw Error("tensor '" + name + "' has dtype " + std::string(dtype_name(t.dtype)) +
                  ", expected a floating-point dtype (F32, F16, BF16, F8_E4M3, F8_E5M2)");
    if (t.shape != shape)
      throw Error("tensor '" + name + "' has shape " + shape_str(t.shape) + " but config.json implies " +
                  shape_str(shape));
    dtypes.insert(std::string(dtype_name(t.dtype)));
    if (bound.insert(name).second) bytes += t.nbytes;
    return t;
  }
  // Small vectors (norm weights, biases) are converted to f32 once: a few KB per layer.
  std::vector<float> vec(const std::string& name, int64_t n) {
    const TensorInfo& t = tensor(name, {n});
    std::vector<float> v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) v[size_t(i)] = load_as_f32(t.data, t.dtype, size_t(i));
    return v;
  }
  Linear linear(const std::string& prefix, int64_t out, int64_t in, bool bias) {
    const TensorInfo& t = tensor(prefix + ".weight", {out, in});
    Linear l{t.data, t.dtype, out, in, {}};
    if (bias) l.bias = vec(prefix + ".bias", out);
    return l;
  }
};

}  // namespace

ModelWeights bind_weights(std::shared_ptr<const SafeTensors> stp, const ModelConfig& c) {
  const SafeTensors& st = *stp;
  // The counts first: the layer and expert arrays below are sized from them.
  check_config_against_checkpoint(c, st);
  Binder b{st, {}, {}, 0};
  ModelWeights w;
  const int64_t H = c.hidden_size, hd = c.head_dim;
  const TensorInfo& emb = b.tensor("model.embed_tokens.weight", {c.vocab_size, H});
  w.embed = emb.data;
  w.embed_dtype = emb.dtype;
  w.layers.resize(size_t(c.num_layers));
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LayerWeights& L = w.layers[size_t(i)];
    L.attn_norm = b.vec(p + "input_layernorm.weight", H);
    L.ffn_norm = b.vec(p + "post_attention_layernorm.weight", H);
    L.q = b.linear(p + "self_attn.q_proj", c.num_heads * hd, H, c.qkv_bias);
    L.k = b.linear(p + "self_attn.k_proj", c.num_kv_heads * hd, H, c.qkv_bias);
    L.v = b.linear(p + "self_attn.v_proj", c.num_kv_heads * hd, H, c.qkv_bias);
    L.o = b.linear(p + "self_attn.o_proj", H, c.num_heads * hd, c.o_bias);
    if (c.qk_norm) {
      L.q_norm = b.vec(p + "self_attn.q_norm.weight", hd);
      L.k_norm = b.vec(p + "self_attn.k_norm.weight", hd);
    }
    if (c.num_experts > 0) {
      L.router = b.linear(p + "block_sparse_moe.gate", c.num_experts, H, false);
      L.experts.resize(size_t(c.num_experts));
      for (int64_t e = 0; e < c.num_experts; ++e) {
        const std::string ep = p + "block_sparse_moe.experts." + std::to_string(e) + ".";
        L.experts[size_t(e)].gate = b.linear(ep + "w1", c.intermediate_size, H, false);
        L.experts[size_t(e)].down = b.linear(ep + "w2", H, c.intermediate_size, false);
        L.experts[size_t(e)].up = b.linear(ep + "w3", c.intermediate_size, H, false);
      }
    } else {
      L.gate = b.linear(p + "mlp.gate_proj", c.intermediate_size, H, c.mlp_bias);
      L.up = b.linear(p + "mlp.up_proj", c.intermediate_size, H, c.mlp_bias);
      L.down = b.linear(p + "mlp.down_proj", H, c.intermediate_size, c.mlp_bias);
    }
  }
  w.final_norm = b.vec("model.norm.weight", H);
  if (c.tie_word_embeddings && !st.find("lm_head.weight")) {
    w.lm_head = Linear{emb.data, emb.dtype, c.vocab_size, H, {}};
  } else {
    w.lm_head = b.linear("lm_head", c.vocab_size, H, false);
  }
  check_unbound_tensors(st, b.bound);
  w.total_bytes = b.bytes;
  w.dtypes.assign(b.dtypes.begin(), b.dtypes.end());
  w.storage = std::move(stp);
  return w;
}

}  // namespace gale
