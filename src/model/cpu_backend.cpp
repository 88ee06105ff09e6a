#include "model/cpu_backend.h"

#include <cstdlib>
#include <cstring>
#include <new>

#include "core/error.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/matmul_bf16.h"
#include "kernels/cpu/ops.h"

namespace gale {

namespace {

void check_f32(const Act& a) { GALE_ASSERT(a.dtype == DType::F32); }

// The matmul's view of a scheme's scales (Backend::supports has checked they are f32 and laid
// out as the kernels read them).
cpu::WeightScales scales_of(const Linear& l) {
  if (l.scheme.scales == WeightScheme::Scales::None) return {};
  const Linear::ScaleLayout s = l.scale_layout();
  return {static_cast<const float*>(l.scheme.scale), s.rows, s.cols, s.ld,
          static_cast<const uint8_t*>(l.scheme.zero), l.scheme.packing == WeightScheme::Packing::U4};
}

}  // namespace

// FP8 weights may carry f32 scales per tensor, channel, group or block (the matmul applies
// them to each widened weight); groups and blocks of a multiple of 16 columns. Everything
// else as the default.
//
// Integer weights (Linear::integer_weights: INT8, packed INT4 with or without zero points,
// per channel or per group, act-order in_perm) in packed rows: cpu::matmul's exact W8A16 /
// W4A16 products; linear() gathers x's columns for an in_perm.
bool CpuBackend::supports(const Linear& l) const {
  const WeightScheme& s = l.scheme;
  if (l.integer_weights()) return l.packed_rows();
  if (s.scales == WeightScheme::Scales::None) return Backend::supports(l);
  const bool grouped = s.scales == WeightScheme::Scales::PerGroup || s.scales == WeightScheme::Scales::PerBlock;
  return l.scaled_fp8() && s.scale_dtype == DType::F32 && (!grouped || (s.group > 0 && s.group % 16 == 0));
}

void* CpuBackend::alloc(size_t bytes) {
  void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  if (!p) throw Error("cannot allocate " + std::to_string(bytes >> 20) + " MiB of host memory");
  return p;
}
void CpuBackend::release(void* p, size_t) { std::free(p); }
void CpuBackend::copy(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }

void CpuBackend::embedding(const ModelWeights& w, Act out) {
  check_f32(out);
  GALE_ASSERT(out.ld == out.cols && out.rows == plan_->T());
  cpu::embedding(plan_->tokens.data(), plan_->T(), w.embed, w.embed_dtype, out.cols, out.f32());
}

void CpuBackend::rmsnorm(Act in, const std::vector<float>& w, float eps, Act out) {
  check_f32(in);
  check_f32(out);
  cpu::rmsnorm(in.f32(), in.ld, in.rows, in.cols, w.data(), eps, out.f32(), out.ld);
}

void CpuBackend::head_rmsnorm(Act x, int64_t n_heads, const std::vector<float>& w, float eps) {
  check_f32(x);
  const int64_t hd = x.cols / n_heads;
  for (int64_t t = 0; t < x.rows; ++t) {
    float* row = x.f32() + t * x.ld;
    cpu::rmsnorm(row, hd, n_heads, hd, w.data(), eps, row, hd);
  }
}

// With bf16 activations (`--dtype bf16`) the products are bf16 × bf16, as a bf16 model computes
// them: cpu::matmul_multi_bf16 rounds x to bf16 and, for bf16 weights in prefill, runs the
// vdpbf16ps / AMX kernels. With f32 activations they are exact f32 products (cpu::matmul).
void CpuBackend::linear(const Linear& l, Act in, Act out, bool accumulate) {
  check_f32(in);
  check_f32(out);
  GALE_ASSERT(in.cols == l.in && out.cols == l.out && in.rows == out.rows);
  const float* x = in.f32();
  int64_t ldx = in.ld;
  if (const int32_t* perm = l.scheme.in_perm) {
    // Act-order: stored column k holds input feature perm[k], so the product reads x[:, perm].
    gathered_.resize(size_t(in.rows * l.in));
    for (int64_t r = 0; r < in.rows; ++r) {
      const float* src = in.f32() + r * in.ld;
      float* dst = gathered_.data() + r * l.in;
      for (int64_t k = 0; k < l.in; ++k) dst[k] = src[perm[k]];
    }
    x = gathered_.data();
    ldx = l.in;
  }
  if (bf16_) {
    const cpu::MatmulTarget t{l.w,    l.dtype, l.out, l.bias.empty() ? nullptr : l.bias.data(), out.f32(), out.ld,
                              accumulate, scales_of(l)};
    cpu::matmul_multi_bf16(x, ldx, in.rows, l.in, {&t, 1});
    return;
  }
  cpu::matmul(x, ldx, in.rows, l.in, l.w, l.dtype, l.out, l.bias.empty() ? nullptr : l.bias.data(), out.f32(),
              out.ld, accumulate, scales_of(l));
}

// x is packed once for all the projections and the threads split their union of output rows
// (cpu::matmul_multi, or matmul_multi_bf16 with bf16 activations); each result is bitwise what
// linear() gives. Act-order matrices each read x in their own column order, so they go one by
// one through linear().
void CpuBackend::linear_fused(std::span<const Linear* const> ls, Act in, Act out) {
  check_f32(in);
  check_f32(out);
  GALE_ASSERT(ls.size() <= 4);
  for (const Linear* l : ls)
    if (l->scheme.in_perm) {
      int64_t c0 = 0;
      for (const Linear* li : ls) {
        linear(*li, in, out.cols_range(c0, li->out), false);
        c0 += li->out;
      }
      return;
    }
  cpu::MatmulTarget targets[4];
  int64_t c0 = 0;
  for (size_t i = 0; i < ls.size(); ++i) {
    const Linear& l = *ls[i];
    GALE_ASSERT(l.in == in.cols);
    targets[i] = {l.w,    l.dtype, l.out, l.bias.empty() ? nullptr : l.bias.data(), out.f32() + c0, out.ld, false,
                  scales_of(l)};
    c0 += l.out;
  }
  GALE_ASSERT(c0 == out.cols && in.rows == out.rows);
  if (bf16_) cpu::matmul_multi_bf16(in.f32(), in.ld, in.rows, in.cols, {targets, ls.size()});
  else cpu::matmul_multi(in.f32(), in.ld, in.rows, in.cols, {targets, ls.size()});
}

void CpuBackend::fill_zero(Act x) {
  check_f32(x);
  for (int64_t r = 0; r < x.rows; ++r) std::memset(x.f32() + r * x.ld, 0, size_t(x.cols) * sizeof(float));
}

void CpuBackend::reduce_add(Act partial, Act x) {
  check_f32(partial);
  check_f32(x);
  GALE_ASSERT(partial.rows == x.rows && partial.cols == x.cols);
  for (int64_t r = 0; r < x.rows; ++r) cpu::axpy_f32(1.0f, partial.f32() + r * partial.ld, x.f32() + r * x.ld, x.cols);
}

void CpuBackend::rope(Act q, int64_t n_q_heads, Act k, int64_t n_k_heads, int64_t head_dim) {
  check_f32(q);
  check_f32(k);
  const int64_t rot = plan_->rot_dim;
  cpu::rope_apply(q.f32(), q.ld, q.rows, n_q_heads, head_dim, rot, plan_->cos.data(), plan_->sin.data());
  cpu::rope_apply(k.f32(), k.ld, k.rows, n_k_heads, head_dim, rot, plan_->cos.data(), plan_->sin.data());
}

void CpuBackend::attention(const KVLayer& kv, Act q, Act k, Act v, int64_t n_heads, int64_t window, float scale,
                           Act out) {
  check_f32(q);
  check_f32(out);
  GALE_ASSERT(supports_kv(kv.dtype));
  const cpu::PagedKV pkv{kv.k, kv.v, kv.dtype, kv.block_size, kv.n_kv_heads, kv.head_dim, kv.k_scale, kv.v_scale};
  for (const StepPlan::Seq& s : plan_->seqs) {
    cpu::paged_kv_write(k.f32() + s.t0 * k.ld, k.ld, v.f32() + s.t0 * v.ld, v.ld, s.n, s.start_pos, pkv,
                        s.block_table);
    cpu::paged_attention(q.f32() + s.t0 * q.ld, q.ld, s.n, n_heads, s.start_pos, pkv, s.block_table, window, scale,
                         out.f32() + s.t0 * out.ld, out.ld);
  }
}

void CpuBackend::silu_mul(Act gate, Act up) {
  check_f32(gate);
  check_f32(up);
  cpu::silu_mul(gate.f32(), gate.ld, up.f32(), up.ld, gate.rows, gate.cols);
}

void CpuBackend::round_act(Act x) {
  if (!bf16_) return;
  check_f32(x);
  if (x.ld == x.cols) {
    cpu::round_to_bf16(x.f32(), x.rows * x.cols);
    return;
  }
  for (int64_t r = 0; r < x.rows; ++r) cpu::round_to_bf16(x.f32() + r * x.ld, x.cols);
}

void CpuBackend::gather_rows(Act src, std::span<const int32_t> rows, Act dst) {
  GALE_ASSERT(src.dtype == dst.dtype && src.cols == dst.cols);
  const size_t es = dtype_size(src.dtype);
  for (size_t i = 0; i < rows.size(); ++i)
    std::memcpy(static_cast<uint8_t*>(dst.data) + i * size_t(dst.ld) * es,
                static_cast<const uint8_t*>(src.data) + size_t(rows[i]) * size_t(src.ld) * es, size_t(src.cols) * es);
}

void CpuBackend::gather_logit_rows(Act src, Act dst) { gather_rows(src, plan_->logit_rows, dst); }

void CpuBackend::scatter_add_rows(Act src, std::span<const int32_t> rows, std::span<const float> weight, Act dst) {
  check_f32(src);
  check_f32(dst);
  for (size_t i = 0; i < rows.size(); ++i)
    cpu::axpy_f32(weight[i], src.f32() + int64_t(i) * src.ld, dst.f32() + int64_t(rows[i]) * dst.ld, src.cols);
}

void CpuBackend::to_host(Act src, float* dst) {
  check_f32(src);
  for (int64_t r = 0; r < src.rows; ++r)
    std::memcpy(dst + r * src.cols, src.f32() + r * src.ld, size_t(src.cols) * sizeof(float));
}

void CpuBackend::argmax_rows(Act logits, int32_t* out) {
  check_f32(logits);
  for (int64_t r = 0; r < logits.rows; ++r)
    out[r] = cpu::argmax(logits.f32() + r * logits.ld, logits.cols);
}

}  // namespace gale
