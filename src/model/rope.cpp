#include "model/rope.h"

#include <algorithm>
#include <cmath>

namespace gale {

namespace {

// transformers computes base ** (arange(0, dim, 2) / dim) in float32.
std::vector<float> default_inv_freq(double base, int64_t dim) {
  std::vector<float> f(static_cast<size_t>(dim / 2));
  for (int64_t i = 0; i < dim / 2; ++i) {
    float expo = float(2 * i) / float(dim);
    f[size_t(i)] = 1.0f / std::pow(float(base), expo);
  }
  return f;
}

double yarn_mscale(double scale, double m) { return scale <= 1.0 ? 1.0 : 0.1 * m * std::log(scale) + 1.0; }

}  // namespace

RopeFrequencies rope_frequencies(const RopeConfig& r, int64_t dim, int64_t seq_len) {
  RopeFrequencies out;
  const double pi = 3.14159265358979323846;
  switch (r.type) {
    case RopeType::Default:
      out.inv_freq = default_inv_freq(r.theta, dim);
      break;
    case RopeType::Linear:
      out.inv_freq = default_inv_freq(r.theta, dim);
      for (auto& f : out.inv_freq) f = float(f / r.factor);
      break;
    case RopeType::Dynamic: {
      double base = r.theta;
      int64_t orig = r.original_max_position;
      if (seq_len > orig) {
        double s = double(seq_len);
        base = r.theta * std::pow(r.factor * s / double(orig) - (r.factor - 1.0), double(dim) / double(dim - 2));
      }
      out.inv_freq = default_inv_freq(base, dim);
      break;
    }
    case RopeType::Llama3: {
      out.inv_freq = default_inv_freq(r.theta, dim);
      const double old_ctx = double(r.original_max_position);
      const double low_wavelen = old_ctx / r.low_freq_factor;
      const double high_wavelen = old_ctx / r.high_freq_factor;
      for (auto& f : out.inv_freq) {
        double inv = f;
        double wavelen = 2 * pi / inv;
        double scaled = wavelen > low_wavelen ? inv / r.factor : inv;
        if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen)) {
          double smooth = (old_ctx / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
          scaled = (1 - smooth) * scaled / r.factor + smooth * scaled;
        }
        f = float(scaled);
      }
      break;
    }
    case RopeType::Yarn: {
      double factor = r.factor;
      if (r.attention_factor) out.attention_scaling = float(*r.attention_factor);
      else if (r.mscale != 0.0 && r.mscale_all_dim != 0.0)
        out.attention_scaling = float(yarn_mscale(factor, r.mscale) / yarn_mscale(factor, r.mscale_all_dim));
      else out.attention_scaling = float(yarn_mscale(factor, 1.0));
      auto correction_dim = [&](double rotations) {
        return (double(dim) * std::log(double(r.original_max_position) / (rotations * 2 * pi))) / (2 * std::log(r.theta));
      };
      double low = correction_dim(r.beta_fast), high = correction_dim(r.beta_slow);
      if (r.truncate) { low = std::floor(low); high = std::ceil(high); }
      low = std::max(low, 0.0);
      high = std::min(high, double(dim - 1));
      if (low == high) high += 0.001;
      std::vector<float> base = default_inv_freq(r.theta, dim);
      out.inv_freq.resize(base.size());
      for (size_t i = 0; i < base.size(); ++i) {
        double ramp = std::clamp((double(i) - low) / (high - low), 0.0, 1.0);
        double extrap_factor = 1.0 - ramp;
        double extrap = base[i], interp = double(base[i]) / factor;
        out.inv_freq[i] = float(interp * (1 - extrap_factor) + extrap * extrap_factor);
      }
      break;
    }
  }
  return out;
}

void rope_cos_sin(const RopeFrequencies& f, const int64_t* positions, int64_t n, float* cos, float* sin) {
  const size_t half = f.inv_freq.size();
  for (int64_t t = 0; t < n; ++t) {
    const float p = float(positions[t]);
    for (size_t i = 0; i < half; ++i) {
      float a = f.inv_freq[i] * p;  // fp32 product, as transformers does
      cos[size_t(t) * half + i] = std::cos(a) * f.attention_scaling;
      sin[size_t(t) * half + i] = std::sin(a) * f.attention_scaling;
    }
  }
}

}  // namespace gale
