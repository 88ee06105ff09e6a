// Scalar reference for rotary position embeddings: the inverse frequencies of every scaling
// type, written from the definitions of transformers' modeling_rope_utils.py (default, linear,
// dynamic NTK, llama3, yarn) in double, independently of model/rope.cpp; their cos/sin rows;
// and the rotation itself (HF's rotate_half layout), which kernels/cpu rope_apply and
// kernels/cuda rope / rope_kv_write implement.
//
// transformers computes inv_freq, the angle and cos/sin in float32; this reference does not, so
// its angles differ from any f32 implementation by about |angle| * 2^-23 (compare with that).
#pragma once
#include <cstdint>
#include <vector>

namespace gale::ref {

enum class RopeScaling { Default, Linear, Dynamic, Llama3, Yarn };

// The parameters of rope_scaling / rope_parameters (kernels do not see loader/'s RopeConfig).
struct RopeSpec {
  RopeScaling type = RopeScaling::Default;
  double theta = 10000.0;
  double factor = 1.0;
  int64_t original_max_position = 0;            // llama3, yarn, dynamic
  double low_freq_factor = 1.0, high_freq_factor = 4.0;  // llama3
  double beta_fast = 32.0, beta_slow = 1.0;     // yarn
  double mscale = 0.0, mscale_all_dim = 0.0;    // yarn, 0 = absent
  bool has_attention_factor = false;            // yarn: attention_factor given
  double attention_factor = 1.0;
  bool truncate = true;                         // yarn
};

struct RopeTable {
  std::vector<double> inv_freq;     // [dim / 2]
  double attention_scaling = 1.0;   // multiplies cos and sin
};

// The inverse frequencies of a rotary dimension dim (head_dim * partial_rotary_factor) for a
// forward whose largest position is seq_len - 1 (only dynamic depends on it).
RopeTable rope_table(const RopeSpec& s, int64_t dim, int64_t seq_len);

// cos/sin [n, dim / 2] of positions[0..n), in double then rounded once.
void rope_cos_sin(const RopeTable& t, const int64_t* positions, int64_t n, float* cos, float* sin);

// Rotates the first rot_dim values of each head in place: for i < rot_dim / 2,
//   (x[i], x[i + half]) <- (x[i] cos - x[i + half] sin, x[i + half] cos + x[i] sin)
// x: [n, n_heads * head_dim] (row stride ld); cos/sin: [n, rot_dim / 2] (this row's position).
void rope_rotate(float* x, int64_t ld, int64_t n, int64_t n_heads, int64_t head_dim, int64_t rot_dim, const float* cos,
                 const float* sin);

}  // namespace gale::ref
