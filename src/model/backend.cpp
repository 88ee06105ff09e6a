#include "model/backend.h"

#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"

namespace gale {

bool Backend::supports(const Linear& l) const {
  return is_float_dtype(l.dtype) && l.scheme.plain() && l.packed_rows();
}

void Backend::download(void* host, const void* src, size_t bytes) {
  if (!is_cpu()) throw Error(name() + ": download is not implemented");
  std::memcpy(host, src, bytes);
}

void* Backend::alloc_host(size_t bytes) {
  // Anonymous mapping: pages are committed on first touch, so a large tier costs what it holds.
  void* p = ::mmap(nullptr, bytes ? bytes : 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw Error("cannot allocate " + std::to_string(bytes >> 20) + " MiB of host memory for the KV host tier");
  return p;
}

void Backend::release_host(void* p, size_t bytes) {
  if (p) ::munmap(p, bytes ? bytes : 1);
}

void Backend::copy_to_host_async(void* host_dst, const void* src, size_t bytes) {
  if (!is_cpu()) throw Error(name() + ": copy_to_host_async is not implemented (host KV tier)");
  std::memcpy(host_dst, src, bytes);
}

void Backend::copy_from_host_async(void* dst, const void* host_src, size_t bytes) {
  if (!is_cpu()) throw Error(name() + ": copy_from_host_async is not implemented (host KV tier)");
  std::memcpy(dst, host_src, bytes);
}

void Backend::fill_zero(Act) { throw Error(name() + ": fill_zero is not implemented (partial residuals)"); }
void Backend::reduce_add(Act, Act) { throw Error(name() + ": reduce_add is not implemented (partial residuals)"); }
void Backend::send_to_stage(Act, int) { throw Error(name() + ": send_to_stage is not implemented (pipeline)"); }
void Backend::recv_from_stage(Act, int) { throw Error(name() + ": recv_from_stage is not implemented (pipeline)"); }
void Backend::all_gather_columns(Act, Act) {
  throw Error(name() + ": all_gather_columns is not implemented (vocabulary-parallel LM head)");
}

void Backend::sample_rows(Act, std::span<const RowSampling>, int32_t*) {
  throw Error("sampling on the device is not available on " + name());
}

namespace {

// Scratch views of the default MoE path, carved out of one workspace (256-byte aligned pieces).
struct HostMoeScratch {
  Act in, gate_up, out;  // [T, hidden], [T, 2 * intermediate], [T, hidden]
  size_t bytes = 0;
  HostMoeScratch(const ModelConfig& c, int64_t T, DType act, DType out_dtype, void* base) {
    const int64_t H = c.hidden_size, I2 = 2 * c.intermediate_size;
    auto take = [&](int64_t cols, DType dt) {
      Act a{static_cast<uint8_t*>(base) + bytes, dt, T, cols, cols};
      bytes += (size_t(T * cols) * dtype_size(dt) + 255) / 256 * 256;
      return a;
    };
    in = take(H, act);
    gate_up = take(I2, act);
    out = take(H, out_dtype);
  }
};

}  // namespace

size_t Backend::moe_workspace_bytes(const ModelConfig& c, int64_t T) const {
  return HostMoeScratch(c, T, act_dtype(), is_cpu() ? DType::F32 : act_dtype(), nullptr).bytes;
}

void Backend::moe_experts(const ModelConfig& c, const LayerWeights& L, Act xn, Act router, void* workspace, Act x) {
  const int64_t T = xn.rows, E = c.num_experts, K = c.num_experts_per_tok;
  const HostMoeScratch ws(c, T, act_dtype(), is_cpu() ? DType::F32 : act_dtype(), workspace);
  // Routing on the host: softmax over experts in f32, top-k, renormalize (Mixtral). The host
  // needs the T x E logits anyway to size each expert's batch.
  std::vector<float> logits(size_t(T * E));
  to_host(router, logits.data());
  std::vector<std::vector<int32_t>> tok(static_cast<size_t>(E));  // expert -> tokens
  std::vector<std::vector<float>> wt(static_cast<size_t>(E));     // expert -> routing weights
  std::vector<int64_t> order(static_cast<size_t>(E));
  for (int64_t t = 0; t < T; ++t) {
    float* r = logits.data() + t * E;
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
      tok[size_t(e)].push_back(int32_t(t));
      wt[size_t(e)].push_back(c.norm_topk_prob ? r[e] / topsum : r[e]);
    }
  }
  // Each expert runs once over the tokens routed to it (a grouped GEMM in spirit).
  for (int64_t e = 0; e < E; ++e) {
    const std::vector<int32_t>& rows = tok[size_t(e)];
    if (rows.empty()) continue;
    const int64_t n = int64_t(rows.size());
    const ExpertWeights& X = L.experts[size_t(e)];
    Act in = ws.in.rows_range(0, n), gu = ws.gate_up.rows_range(0, n), out = ws.out.rows_range(0, n);
    gather_rows(xn, rows, in);
    const Linear* proj[] = {&X.gate, &X.up};
    linear_fused(proj, in, gu);
    swiglu_linear(gu, X.down, out, false);
    scatter_add_rows(out, rows, wt[size_t(e)], x);
  }
}

void Backend::launch_argmax_rows(Act logits) {
  launched_ids_.resize(size_t(logits.rows));
  argmax_rows(logits, launched_ids_.data());
}

void Backend::launch_sample_rows(Act logits, std::span<const RowSampling> rows) {
  launched_ids_.resize(size_t(logits.rows));
  sample_rows(logits, rows, launched_ids_.data());
}

void Backend::wait_ids(int32_t* out) {
  std::copy(launched_ids_.begin(), launched_ids_.end(), out);
}

}  // namespace gale
