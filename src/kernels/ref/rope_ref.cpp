#include "kernels/ref/rope_ref.h"

#include <algorithm>
#include <cmath>

namespace gale::ref {

namespace {

constexpr double kPi = 3.14159265358979323846;

// 1 / base^(2i / dim), i < dim / 2.
std::vector<double> plain(double base, int64_t dim) {
  std::vector<double> f(size_t(dim / 2));
  for (int64_t i = 0; i < dim / 2; ++i) f[size_t(i)] = 1.0 / std::pow(base, double(2 * i) / double(dim));
  return f;
}

// YaRN's attention temperature: 0.1 * m * ln(scale) + 1 when scale > 1.
double yarn_get_mscale(double scale, double m) { return scale <= 1.0 ? 1.0 : 0.1 * m * std::log(scale) + 1.0; }

}  // namespace

RopeTable rope_table(const RopeSpec& s, int64_t dim, int64_t seq_len) {
  RopeTable t;
  switch (s.type) {
    case RopeScaling::Default:
      t.inv_freq = plain(s.theta, dim);
      break;
    case RopeScaling::Linear:  // positions divided by factor
      t.inv_freq = plain(s.theta, dim);
      for (double& f : t.inv_freq) f /= s.factor;
      break;
    case RopeScaling::Dynamic: {  // NTK: a larger base once the sequence outgrows the original context
      double base = s.theta;
      const double orig = double(s.original_max_position);
      if (double(seq_len) > orig)
        base *= std::pow(s.factor * double(seq_len) / orig - (s.factor - 1.0), double(dim) / double(dim - 2));
      t.inv_freq = plain(base, dim);
      break;
    }
    case RopeScaling::Llama3: {
      // Wavelengths longer than orig / low_freq_factor are scaled by 1 / factor, shorter than
      // orig / high_freq_factor kept, and the band between blends the two linearly in
      // orig / wavelength.
      t.inv_freq = plain(s.theta, dim);
      const double orig = double(s.original_max_position);
      const double low_wavelen = orig / s.low_freq_factor, high_wavelen = orig / s.high_freq_factor;
      for (double& f : t.inv_freq) {
        const double wavelen = 2.0 * kPi / f;
        if (wavelen > low_wavelen) {
          f = f / s.factor;
        } else if (wavelen >= high_wavelen) {
          const double smooth = (orig / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
          f = (1.0 - smooth) * f / s.factor + smooth * f;
        }
      }
      break;
    }
    case RopeScaling::Yarn: {
      if (s.has_attention_factor) t.attention_scaling = s.attention_factor;
      else if (s.mscale != 0.0 && s.mscale_all_dim != 0.0)
        t.attention_scaling = yarn_get_mscale(s.factor, s.mscale) / yarn_get_mscale(s.factor, s.mscale_all_dim);
      else t.attention_scaling = yarn_get_mscale(s.factor, 1.0);
      // The dimension whose wavelength makes `rotations` turns over the original context.
      auto dim_of = [&](double rotations) {
        return double(dim) * std::log(double(s.original_max_position) / (rotations * 2.0 * kPi)) /
               (2.0 * std::log(s.theta));
      };
      double lo = dim_of(s.beta_fast), hi = dim_of(s.beta_slow);
      if (s.truncate) {
        lo = std::floor(lo);
        hi = std::ceil(hi);
      }
      lo = std::max(lo, 0.0);
      hi = std::min(hi, double(dim - 1));
      if (lo == hi) hi += 0.001;
      const std::vector<double> extrapolated = plain(s.theta, dim);
      t.inv_freq.resize(extrapolated.size());
      for (size_t i = 0; i < extrapolated.size(); ++i) {
        // Ramp 0 below lo (pure extrapolation), 1 above hi (pure interpolation by factor).
        const double ramp = std::min(1.0, std::max(0.0, (double(i) - lo) / (hi - lo)));
        const double interpolated = extrapolated[i] / s.factor;
        t.inv_freq[i] = interpolated * ramp + extrapolated[i] * (1.0 - ramp);
      }
      break;
    }
  }
  return t;
}

void rope_cos_sin(const RopeTable& t, const int64_t* positions, int64_t n, float* cos, float* sin) {
  const size_t half = t.inv_freq.size();
  for (int64_t r = 0; r < n; ++r)
    for (size_t i = 0; i < half; ++i) {
      const double a = double(positions[r]) * t.inv_freq[i];
      cos[size_t(r) * half + i] = float(std::cos(a) * t.attention_scaling);
      sin[size_t(r) * half + i] = float(std::sin(a) * t.attention_scaling);
    }
}

void rope_rotate(float* x, int64_t ld, int64_t n, int64_t n_heads, int64_t head_dim, int64_t rot_dim, const float* cos,
                 const float* sin) {
  const int64_t half = rot_dim / 2;
  for (int64_t r = 0; r < n; ++r)
    for (int64_t h = 0; h < n_heads; ++h) {
      float* v = x + r * ld + h * head_dim;
      for (int64_t i = 0; i < half; ++i) {
        const double c = cos[r * half + i], s = sin[r * half + i];
        const double a = v[i], b = v[i + half];
        v[i] = float(a * c - b * s);
        v[i + half] = float(b * c + a * s);
      }
    }
}

}  // namespace gale::ref
