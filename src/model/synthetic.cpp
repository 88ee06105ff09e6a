#include "model/synthetic.h"

#include <sys/mman.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/thread_pool.h"
#include "loader/safetensors.h"
#include "model/arch/arch.h"

using nlohmann::json;

namespace gale {

namespace {

struct Shape {
  const char* name;
  const char* arch;
  int64_t vocab, hidden, inter, layers, heads, kv_heads, head_dim;
  bool tied;
  double theta;
  int64_t experts, experts_per_tok;
};

// Public shapes of real checkpoints (their config.json values).
const Shape kShapes[] = {
    {"llama3-8b", "LlamaForCausalLM", 128256, 4096, 14336, 32, 32, 8, 128, false, 500000.0, 0, 0},
    {"llama3-1b", "LlamaForCausalLM", 128256, 2048, 8192, 16, 32, 8, 64, true, 500000.0, 0, 0},
    {"qwen3-0.6b", "Qwen3ForCausalLM", 151936, 1024, 3072, 28, 16, 8, 128, true, 1000000.0, 0, 0},
    {"qwen2.5-0.5b", "Qwen2ForCausalLM", 151936, 896, 4864, 24, 14, 2, 64, true, 1000000.0, 0, 0},
    {"mistral-7b", "MistralForCausalLM", 32000, 4096, 14336, 32, 32, 8, 128, false, 10000.0, 0, 0},
    {"mixtral-tiny", "MixtralForCausalLM", 32000, 1024, 3584, 4, 16, 8, 64, false, 1000000.0, 8, 2},
    {"tiny", "LlamaForCausalLM", 1024, 256, 768, 4, 8, 4, 32, false, 10000.0, 0, 0},
};

// Anonymous memory released with munmap; huge pages are requested for the weight stream.
struct AnonBuffer {
  void* p = nullptr;
  size_t n = 0;
  explicit AnonBuffer(size_t bytes) : n(bytes) {
    p = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw Error("cannot allocate " + std::to_string(n >> 20) + " MiB for synthetic weights");
#ifdef MADV_HUGEPAGE
    ::madvise(p, n, MADV_HUGEPAGE);
#endif
  }
  ~AnonBuffer() { ::munmap(p, n); }
};

}  // namespace

std::vector<std::string> synthetic_model_names() {
  std::vector<std::string> r;
  for (const Shape& s : kShapes) r.push_back(s.name);
  return r;
}

ModelConfig synthetic_config(const std::string& name) {
  for (const Shape& s : kShapes) {
    if (name != s.name) continue;
    json j = {{"architectures", {s.arch}}, {"vocab_size", s.vocab}, {"hidden_size", s.hidden},
              {"intermediate_size", s.inter}, {"num_hidden_layers", s.layers}, {"num_attention_heads", s.heads},
              {"num_key_value_heads", s.kv_heads}, {"head_dim", s.head_dim}, {"tie_word_embeddings", s.tied},
              {"rope_theta", s.theta}, {"max_position_embeddings", 131072}, {"rms_norm_eps", 1e-5},
              {"torch_dtype", "bfloat16"}, {"bos_token_id", 1}, {"eos_token_id", 2}};
    if (s.experts) {
      j["num_local_experts"] = s.experts;
      j["num_experts_per_tok"] = s.experts_per_tok;
    }
    return parse_model_config(j, "synthetic:" + name);
  }
  std::string list;
  for (const Shape& s : kShapes) list += (list.empty() ? "" : ", ") + std::string(s.name);
  throw Error("unknown synthetic model '" + name + "' (known: " + list + ")");
}

ModelWeights synthetic_weights(const ModelConfig& c, uint64_t seed) {
  // Lay the tensors out as a safetensors blob in memory so they bind through the same
  // validated path as a checkpoint on disk.
  // The tensors as the architecture names them (model/arch/), tied LM head included or not.
  const auto tensors = checkpoint_layout(c);

  json header = json::object();
  uint64_t off = 0;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto& [name, shape] : tensors) {
    uint64_t n = 2;
    for (int64_t d : shape) n *= uint64_t(d);
    header[name] = {{"dtype", "BF16"}, {"shape", shape}, {"data_offsets", {off, off + n}}};
    ranges.push_back({off, n});
    off += n;
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');  // keep the data section 8-byte aligned
  const size_t data_start = 8 + h.size();
  auto buf = std::make_shared<AnonBuffer>(data_start + off);
  uint8_t* base = static_cast<uint8_t*>(buf->p);
  uint64_t hl = h.size();
  for (int i = 0; i < 8; ++i) base[i] = uint8_t(hl >> (8 * i));
  std::memcpy(base + 8, h.data(), h.size());

  // Random bf16 values ~ ±U(0, 0.03) (norm weights near 1) from a counter-based hash, so the
  // fill parallelizes and is the same for any thread count.
  for (size_t ti = 0; ti < tensors.size(); ++ti) {
    uint16_t* dst = reinterpret_cast<uint16_t*>(base + data_start + ranges[ti].first);
    const int64_t n = int64_t(ranges[ti].second / 2);
    const bool is_norm = tensors[ti].second.size() == 1;
    parallel_for(n, [&](int64_t b, int64_t e, int) {
      for (int64_t i = b; i < e; ++i) {
        uint64_t z = (seed + ti) * 0x9E3779B97F4A7C15ull + uint64_t(i) * 0xBF58476D1CE4E5B9ull;
        z ^= z >> 31; z *= 0x94D049BB133111EBull; z ^= z >> 29;
        float u = float(z >> 40) / float(1 << 24);  // [0, 1)
        float val = is_norm ? 1.0f + 0.1f * (u - 0.5f) : 0.06f * (u - 0.5f);
        dst[i] = f32_to_bf16(val);
      }
    }, 1 << 16);
  }
  auto st = std::make_shared<SafeTensors>(
      SafeTensors::from_memory(buf, base, data_start + off, "synthetic model"));
  return bind_weights(st, c);
}

}  // namespace gale
