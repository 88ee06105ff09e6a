#include "model/int_checkpoint.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "core/error.h"
#include "core/thread_pool.h"
#include "loader/safetensors.h"
#include "model/weights.h"

namespace gale {

namespace {

using Format = QuantConfig::Format;

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

std::string dtypes_str(std::initializer_list<DType> ds) {
  std::string r;
  for (DType d : ds) r += (r.empty() ? "" : " or ") + std::string(dtype_name(d));
  return r;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Word i of an int32 tensor (the mapping need not be 4-byte aligned).
uint32_t word(const TensorInfo& t, size_t i) {
  uint32_t v;
  std::memcpy(&v, t.data + i * 4, 4);
  return v;
}

int64_t int_at(const TensorInfo& t, size_t i) {
  switch (t.dtype) {
    case DType::I32: return int32_t(word(t, i));
    case DType::I64: {
      int64_t v;
      std::memcpy(&v, t.data + i * 8, 8);
      return v;
    }
    case DType::I8: return int8_t(t.data[i]);
    default: return int64_t(t.data[i]);
  }
}

// The checks every stored tensor goes through, with one message shape for all formats.
struct Checker {
  const QuantConfig& q;
  const std::string& module;
  const TensorInfo& weight;  // the module's values tensor, which is always present

  const TensorInfo& need(const TensorInfo* t, const std::string& name) const {
    if (!t)
      throw Error("the checkpoint has '" + weight.name + "' but no '" + name + "' (" + q.describe() + ")");
    return *t;
  }
  void check(const TensorInfo& t, std::initializer_list<DType> dtypes, const std::vector<int64_t>& shape) const {
    if (std::find(dtypes.begin(), dtypes.end(), t.dtype) == dtypes.end())
      throw Error("tensor '" + t.name + "' has dtype " + std::string(dtype_name(t.dtype)) + ", expected " +
                  dtypes_str(dtypes) + " (" + q.describe() + ")");
    if (t.shape != shape)
      throw Error("tensor '" + t.name + "' has shape " + shape_str(t.shape) + " but " + q.describe() +
                  " and config.json imply " + shape_str(shape));
  }
};

constexpr std::initializer_list<DType> kScaleDtypes = {DType::F16, DType::BF16, DType::F32};

// The input order of an act-order matrix from its g_idx (the group of each input column):
// columns sorted by group, stably, so that canonical column j holds input perm[j] and group
// g spans columns [g · group, (g + 1) · group). Empty when g_idx is the plain k / group.
std::vector<int32_t> act_order_perm(const TensorInfo* g_idx, int64_t in, int64_t group, int64_t groups) {
  if (!g_idx) return {};
  std::vector<int64_t> g(static_cast<size_t>(in));
  bool trivial = true;
  for (int64_t k = 0; k < in; ++k) {
    g[size_t(k)] = int_at(*g_idx, size_t(k));
    if (g[size_t(k)] < 0 || g[size_t(k)] >= groups)
      throw Error("tensor '" + g_idx->name + "' gives input " + std::to_string(k) + " group " +
                  std::to_string(g[size_t(k)]) + ", outside [0, " + std::to_string(groups) + ")");
    trivial = trivial && g[size_t(k)] == (group ? k / group : 0);
  }
  if (trivial) return {};
  std::vector<int32_t> perm(static_cast<size_t>(in));
  std::iota(perm.begin(), perm.end(), 0);
  std::stable_sort(perm.begin(), perm.end(), [&](int32_t a, int32_t b) { return g[size_t(a)] < g[size_t(b)]; });
  // GPTQ's act order gives each group exactly `group` inputs (the last one the rest); any
  // other grouping has no layout with one scale per run of columns.
  for (int64_t j = 0; j < in; ++j)
    if (g[size_t(perm[size_t(j)])] != j / group)
      throw Error("tensor '" + g_idx->name + "' does not give each group " + std::to_string(group) +
                  " inputs (group " + std::to_string(j / group) + " has another count)");
  return perm;
}

// The canonical matrix from the format's accessors: u(n, k) the unsigned code of output n,
// input k; z(n, g) its unsigned zero point and s(n, g) its scale in group g.
template <class U, class Z, class S>
IntMatrix build(const QuantConfig& q, int64_t out, int64_t in, int64_t groups, std::vector<int32_t> perm,
                const std::string& zeros_name, const std::string& scales_name, U u, Z z, S s) {
  IntMatrix m;
  m.bits = q.bits;
  m.out = out;
  m.in = in;
  m.group = q.group;
  const size_t ns = size_t(out) * size_t(groups);
  m.scales = std::shared_ptr<float[]>(new float[ns]);
  auto zeros = std::shared_ptr<uint8_t[]>(new uint8_t[ns]);
  const uint32_t mid = 1u << (q.bits - 1);
  bool all_mid = true;
  for (int64_t n = 0; n < out; ++n)
    for (int64_t g = 0; g < groups; ++g) {
      const size_t i = size_t(n) * size_t(groups) + size_t(g);
      m.scales[i] = s(n, g);
      if (!std::isfinite(m.scales[i]))
        throw Error("tensor '" + scales_name + "' holds a non-finite scale (output " + std::to_string(n) + ", group " +
                    std::to_string(g) + ")");
      const uint32_t zz = z(n, g);
      if (q.bits == 8 && zz != mid)
        throw Error("tensor '" + zeros_name + "' holds zero point " + std::to_string(int64_t(zz) - int64_t(mid)) +
                    " (output " + std::to_string(n) + ", group " + std::to_string(g) +
                    "); 8-bit weights are loaded symmetric only (INT8 has no zero points)");
      zeros[i] = uint8_t(zz);
      all_mid = all_mid && zz == mid;
    }
  if (q.bits == 4 && !all_mid) m.zeros = std::move(zeros);
  if (!perm.empty()) {
    m.perm = std::shared_ptr<int32_t[]>(new int32_t[size_t(in)]);
    std::copy(perm.begin(), perm.end(), m.perm.get());
  }
  const int64_t row_bytes = q.bits == 8 ? in : in / 2;
  m.codes = std::shared_ptr<uint8_t[]>(new uint8_t[size_t(out) * size_t(row_bytes)]);
  const int32_t* p = m.perm.get();
  uint8_t* codes = m.codes.get();
  parallel_for(
      out,
      [&](int64_t n0, int64_t n1, int) {
        for (int64_t n = n0; n < n1; ++n) {
          uint8_t* row = codes + n * row_bytes;
          if (q.bits == 8) {
            for (int64_t j = 0; j < in; ++j) row[j] = uint8_t(int8_t(int(u(n, p ? p[j] : j)) - 128));
          } else {
            for (int64_t j = 0; j < in; j += 2)
              row[j / 2] = uint8_t(u(n, p ? p[j] : j) | (u(n, p ? p[j + 1] : j + 1) << 4));
          }
        }
      },
      std::max<int64_t>(1, 65536 / std::max<int64_t>(in, 1)));
  return m;
}

// AWQ's nibble slot of output column n % 8 (AutoAWQ's order 0, 2, 4, 6, 1, 3, 5, 7, inverted).
constexpr int kAwqSlot[8] = {0, 4, 1, 5, 2, 6, 3, 7};

IntMatrix repack_awq(const QuantConfig& q, const Checker& c, int64_t out, int64_t in, const IntSource& src,
                     const IntTensorNames& names) {
  if (out % 8 != 0 || in % q.group != 0)
    throw Error("'" + c.module + "' is [" + std::to_string(out) + ", " + std::to_string(in) +
                "]; AWQ packs 8 outputs per int32 and whole groups of " + std::to_string(q.group) + " inputs");
  const int64_t groups = in / q.group, words = out / 8;
  const TensorInfo& w = *src.weight;
  const TensorInfo& z = c.need(src.zeros, names.zeros);
  const TensorInfo& s = c.need(src.scales, names.scales);
  c.check(w, {DType::I32}, {in, words});
  c.check(z, {DType::I32}, {groups, words});
  c.check(s, kScaleDtypes, {groups, out});
  auto nib = [&](const TensorInfo& t, int64_t row, int64_t n) {
    return (word(t, size_t(row * words + n / 8)) >> (4 * kAwqSlot[n % 8])) & 15u;
  };
  return build(
      q, out, in, groups, {}, z.name, s.name, [&](int64_t n, int64_t k) { return nib(w, k, n); },
      [&](int64_t n, int64_t g) { return nib(z, g, n); },
      [&](int64_t n, int64_t g) { return load_as_f32(s.data, s.dtype, size_t(g * out + n)); });
}

IntMatrix repack_gptq(const QuantConfig& q, const Checker& c, int64_t out, int64_t in, const IntSource& src,
                      const IntTensorNames& names) {
  const int per = 32 / q.bits;
  const uint32_t mask = (1u << q.bits) - 1;
  if (out % per != 0 || in % per != 0)
    throw Error("'" + c.module + "' is [" + std::to_string(out) + ", " + std::to_string(in) + "]; " +
                std::to_string(q.bits) + "-bit GPTQ packs " + std::to_string(per) + " values per int32 both ways");
  const int64_t groups = q.group ? ceil_div(in, q.group) : 1;
  const TensorInfo& w = *src.weight;
  const TensorInfo& z = c.need(src.zeros, names.zeros);
  const TensorInfo& s = c.need(src.scales, names.scales);
  c.check(w, {DType::I32}, {in / per, out});
  c.check(z, {DType::I32}, {groups, out / per});
  c.check(s, kScaleDtypes, {groups, out});
  if (src.g_idx) c.check(*src.g_idx, {DType::I32, DType::I64}, {in});
  const bool v1 = q.gptq_v1_zeros;
  return build(
      q, out, in, groups, act_order_perm(src.g_idx, in, q.group, groups), z.name, s.name,
      [&](int64_t n, int64_t k) { return (word(w, size_t((k / per) * out + n)) >> (q.bits * (k % per))) & mask; },
      // v1 stored z − 1 (so symmetric 4-bit reads 7): add it back, wrapping as the unsigned
      // arithmetic that wrote it did.
      [&](int64_t n, int64_t g) {
        const uint32_t v = (word(z, size_t(g * (out / per) + n / per)) >> (q.bits * (n % per))) & mask;
        return v1 ? (v + 1) & mask : v;
      },
      [&](int64_t n, int64_t g) { return load_as_f32(s.data, s.dtype, size_t(g * out + n)); });
}

IntMatrix repack_compressed(const QuantConfig& q, const Checker& c, int64_t out, int64_t in, const IntSource& src,
                            const IntTensorNames& names) {
  const int per = 32 / q.bits;
  const uint32_t mask = (1u << q.bits) - 1, mid = 1u << (q.bits - 1);
  const int64_t groups = q.group ? ceil_div(in, q.group) : 1;
  const TensorInfo& w = *src.weight;
  const TensorInfo& s = c.need(src.scales, names.scales);
  if (q.bits == 4 && in % 2 != 0)
    throw Error("'" + c.module + "' has " + std::to_string(in) + " inputs; 4-bit weights need an even count");
  c.check(s, kScaleDtypes, {out, groups});
  if (src.g_idx) c.check(*src.g_idx, {DType::I32, DType::I64}, {in});
  if (src.shape) {
    c.check(*src.shape, {DType::I32, DType::I64}, {2});
    if (int_at(*src.shape, 0) != out || int_at(*src.shape, 1) != in)
      throw Error("tensor '" + src.shape->name + "' says [" + std::to_string(int_at(*src.shape, 0)) + ", " +
                  std::to_string(int_at(*src.shape, 1)) + "] but config.json implies [" + std::to_string(out) + ", " +
                  std::to_string(in) + "]");
  }
  if (!q.symmetric) c.need(src.zeros, names.zeros);
  // Zero points: packed along the output dim (what pack-quantized writes for group and
  // channel strategies), or one signed I8 per scale (int-quantized, older writers).
  const TensorInfo* z = src.zeros;
  bool z_packed = false;
  if (z) {
    z_packed = q.packed && z->dtype == DType::I32;
    if (z_packed)
      c.check(*z, {DType::I32}, {ceil_div(out, per), groups});
    else
      c.check(*z, {DType::I8}, {out, groups});
  }
  auto zero = [&](int64_t n, int64_t g) -> uint32_t {
    if (!z) return mid;
    if (z_packed) return (word(*z, size_t((n / per) * groups + g)) >> (q.bits * (n % per))) & mask;
    const int v = int8_t(z->data[n * groups + g]);
    if (v < -int(mid) || v >= int(mid))
      throw Error("tensor '" + z->name + "' holds zero point " + std::to_string(v) + ", outside the " +
                  std::to_string(q.bits) + "-bit range");
    return uint32_t(v + int(mid));
  };
  auto scale = [&](int64_t n, int64_t g) { return load_as_f32(s.data, s.dtype, size_t(n * groups + g)); };
  std::vector<int32_t> perm = act_order_perm(src.g_idx, in, q.group, groups);
  const std::string zname = z ? z->name : names.zeros;
  if (q.packed) {
    const int64_t words = ceil_div(in, per);
    c.check(w, {DType::I32}, {out, words});
    return build(
        q, out, in, groups, std::move(perm), zname, s.name,
        [&](int64_t n, int64_t k) { return (word(w, size_t(n * words + k / per)) >> (q.bits * (k % per))) & mask; },
        zero, scale);
  }
  c.check(w, {DType::I8}, {out, in});
  if (q.bits == 4)  // 4-bit values held one per int8 must lie in [-8, 7]
    for (int64_t i = 0; i < out * in; ++i)
      if (int8_t(w.data[i]) < -8 || int8_t(w.data[i]) > 7)
        throw Error("tensor '" + w.name + "' holds " + std::to_string(int(int8_t(w.data[i]))) +
                    ", outside the 4-bit range [-8, 7]");
  return build(
      q, out, in, groups, std::move(perm), zname, s.name,
      [&](int64_t n, int64_t k) { return uint32_t(int(int8_t(w.data[n * in + k])) + int(mid)); }, zero, scale);
}

}  // namespace

IntTensorNames int_tensor_names(const QuantConfig& q, const std::string& m) {
  switch (q.format) {
    case Format::Awq: return {m + ".qweight", m + ".qzeros", m + ".scales", "", ""};
    case Format::Gptq: return {m + ".qweight", m + ".qzeros", m + ".scales", m + ".g_idx", ""};
    case Format::CompressedTensorsInt:
      return {m + (q.packed ? ".weight_packed" : ".weight"), m + ".weight_zero_point", m + ".weight_scale",
              m + ".weight_g_idx", q.packed ? m + ".weight_shape" : ""};
    default: GALE_ASSERT(false && "not an integer format");
  }
  return {};
}

void IntMatrix::apply(Linear& l) const {
  l.w = codes.get();
  l.dtype = bits == 8 ? DType::I8 : DType::U8;
  l.ld = 0;
  WeightScheme& s = l.scheme;
  s = WeightScheme{};
  s.packing = bits == 8 ? WeightScheme::Packing::None : WeightScheme::Packing::U4;
  s.scales = group ? WeightScheme::Scales::PerGroup : WeightScheme::Scales::PerChannel;
  s.group = group;
  s.scale = scales.get();
  s.scale_dtype = DType::F32;
  s.zero = zeros.get();
  s.zero_dtype = DType::U8;
  s.in_perm = perm.get();
}

void IntMatrix::keep(std::vector<std::shared_ptr<const void>>& owned) const {
  owned.push_back(codes);
  owned.push_back(scales);
  if (zeros) owned.push_back(zeros);
  if (perm) owned.push_back(perm);
}

IntMatrix repack_int_weights(const QuantConfig& q, const std::string& module, int64_t out, int64_t in,
                             const IntSource& src) {
  GALE_ASSERT(q.integer() && src.weight);
  const IntTensorNames names = int_tensor_names(q, module);
  const Checker c{q, module, *src.weight};
  switch (q.format) {
    case Format::Awq: return repack_awq(q, c, out, in, src, names);
    case Format::Gptq: return repack_gptq(q, c, out, in, src, names);
    default: return repack_compressed(q, c, out, in, src, names);
  }
}

}  // namespace gale
