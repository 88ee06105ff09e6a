// CudaBackend's per-step work before the ops: begin_step packs the host's StepPlan (ids, slots,
// lengths, cumulative query counts, block tables, rotary tables, logit rows) into one pinned
// buffer sent with one copy, and sizes every scratch buffer the step needs (nothing may be
// allocated mid-capture). A pure decode step is padded to a batch bucket and replayed from a CUDA
// graph captured the first time its shape is seen (replay_step / end_step_ops).
#include "model/cuda/cuda_backend_impl.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "kernels/cuda/decode_attention.cuh"

namespace gale {

namespace {

// Batch buckets of captured decode graphs (vLLM pads the same way): few graphs, little padding.
constexpr int64_t kGraphBuckets[] = {1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512};

bool decode_step(const StepPlan& plan) {
  return plan.all_decode() && int64_t(plan.logit_rows.size()) == plan.T();
}

}  // namespace

int64_t CudaBackend::padded_tokens(const StepPlan& plan) const {
  // MoE steps are graphable when routing stays on the device (moe_kernels_).
  if (!opt_.graphs || (cfg_.num_experts > 0 && !moe_kernels_) || !decode_step(plan)) return plan.T();
  for (int64_t b : kGraphBuckets)
    if (b >= plan.T()) return b;
  return plan.T();
}

void CudaBackend::begin_step(const StepPlan& plan) {
  const int64_t T = plan.T(), Tp = std::max(plan.padded_T, T), pad = Tp - T;
  const int64_t S = int64_t(plan.seqs.size()) + pad, R = int64_t(plan.logit_rows.size()) + pad;
  const int64_t half = plan.rot_dim / 2, bs = plan.block_size;
  int64_t maxb = 1, max_q = 0, max_len = 0;
  // Leading one-token sequences (the scheduler puts decodes first) go to the GQA-aware split-K
  // decode kernel even in a mixed step; the prefill kernel would read each K/V once per query
  // head for them.
  n_lead_decode_ = 0;
  while (n_lead_decode_ < int64_t(plan.seqs.size()) && plan.seqs[size_t(n_lead_decode_)].n == 1) ++n_lead_decode_;
  for (const StepPlan::Seq& s : plan.seqs) {
    maxb = std::max<int64_t>(maxb, int64_t(s.block_table.size()));
    if (&s - plan.seqs.data() >= n_lead_decode_) max_q = std::max(max_q, s.n);
    max_len = std::max(max_len, s.start_pos + s.n);
  }
  all_decode_ = plan.all_decode();
  if (all_decode_) n_lead_decode_ = int64_t(plan.seqs.size()) + pad;
  // Act-order integer weights gather x into a buffer that may grow mid-step: no graphs.
  graphable_ = opt_.graphs && !has_perm_ && (cfg_.num_experts == 0 || moe_kernels_) && decode_step(plan) &&
               Tp == padded_tokens(plan);
  if (graphable_) {
    // A graph bakes the block-table stride and the attention split in: round the table width
    // up to a power of two and size the split for the longest context that width holds.
    int64_t cols = 16;
    while (cols < maxb) cols *= 2;
    maxb = cols;
    max_len = cols * bs;
    key_ = {Tp, cols, plan.kv_base};
  }
  // Packed layout (4-byte words): ids[T] slots[T] seq_lens[S] cu_q[S+1] start[S] logit_rows[R]
  // tables[S*maxb] cos[T*half] sin[T*half]; padding rows are one-token sequences with slot -1
  // (their K/V are not written) and an all-zero block table.
  const size_t words = size_t(2 * Tp + 3 * S + 1 + R + S * maxb + 2 * Tp * half);
  const size_t bytes = words * 4;
  cuda_check(cudaEventSynchronize(plan_sent_), "step");  // the previous plan left the pinned buffer
  if (opt_.profile) cuda_check(cudaEventRecord(prof_begin_, stream_), "profile");
  grow_pinned(h_plan_, bytes);
  grow_device(d_plan_, bytes);
  int32_t* h = static_cast<int32_t*>(h_plan_.p);
  int32_t* ids = h;
  int32_t* slots = ids + Tp;
  int32_t* lens = slots + Tp;
  int32_t* cu = lens + S;
  int32_t* start = cu + S + 1;
  int32_t* lrows = start + S;
  int32_t* tables = lrows + R;
  float* cs = reinterpret_cast<float*>(tables + S * maxb);
  float* sn = cs + Tp * half;
  std::memcpy(ids, plan.tokens.data(), size_t(T) * 4);
  std::fill(ids + T, ids + Tp, 0);
  std::fill(slots + T, slots + Tp, -1);
  cu[0] = 0;
  for (int64_t i = 0; i < S; ++i) {
    int32_t* row = tables + i * maxb;
    if (i >= int64_t(plan.seqs.size())) {  // padding
      lens[i] = 1;
      cu[i + 1] = cu[i] + 1;
      start[i] = 0;
      std::fill(row, row + maxb, 0);
      continue;
    }
    const StepPlan::Seq& s = plan.seqs[size_t(i)];
    for (int64_t j = 0; j < s.n; ++j) {
      const int64_t pos = s.start_pos + j;
      slots[s.t0 + j] = int32_t(int64_t(s.block_table[size_t(pos / bs)]) * bs + pos % bs);
    }
    lens[i] = int32_t(s.start_pos + s.n);
    cu[i + 1] = int32_t(s.t0 + s.n);
    start[i] = int32_t(s.start_pos);
    std::copy(s.block_table.begin(), s.block_table.end(), row);
    std::fill(row + s.block_table.size(), row + maxb, 0);
  }
  std::copy(plan.logit_rows.begin(), plan.logit_rows.end(), lrows);
  for (int64_t i = 0; i < pad; ++i) lrows[int64_t(plan.logit_rows.size()) + i] = int32_t(T + i);
  std::memcpy(cs, plan.cos.data(), size_t(T * half) * 4);
  std::memcpy(sn, plan.sin.data(), size_t(T * half) * 4);
  std::fill(cs + T * half, cs + Tp * half, 1.0f);
  std::fill(sn + T * half, sn + Tp * half, 0.0f);
  cuda_check(cudaMemcpyAsync(d_plan_.p, h_plan_.p, bytes, cudaMemcpyHostToDevice, stream_), "step upload");
  cuda_check(cudaEventRecord(plan_sent_, stream_), "step");

  int32_t* d = static_cast<int32_t*>(d_plan_.p);
  d_ids_ = d;
  d_slots_ = d + Tp;
  d_seq_lens_ = d_slots_ + Tp;
  d_cu_q_ = d_seq_lens_ + S;
  d_start_ = d_cu_q_ + S + 1;
  d_logit_rows_ = d_start_ + S;
  d_tables_ = d_logit_rows_ + R;
  d_cos_ = reinterpret_cast<float*>(d_tables_ + S * maxb);
  d_sin_ = d_cos_ + Tp * half;
  n_seqs_ = S;
  n_tokens_ = Tp;
  max_blocks_ = maxb;
  max_q_len_ = max_q;
  max_seq_len_ = max_len;
  if (n_lead_decode_ > 0) {  // the split-K workspace, sized here: nothing may be allocated mid-capture
    cuda::DecodeAttentionParams p =
        decode_attention_shape(n_lead_decode_, cfg_.num_heads, cfg_.num_kv_heads, cfg_.head_dim, max_len, bs, 0);
    size_t ws = 0;  // the largest split any layer's window may use
    for (int64_t w : cfg_.layer_window) {
      p.window = w;
      ws = std::max(ws, cuda::decode_attention_workspace_size(p));
    }
    grow_device(d_ws_, ws);
  }
  if (cfg_.num_experts == 0)  // swiglu_mlp's activations (sized here: nothing is allocated mid-capture)
    grow_device(d_act_, size_t(Tp * cfg_.intermediate_size) * 2);
}

bool CudaBackend::replay_step() {
  if (!graphable_) return false;
  if (auto it = graphs_.find(key_); it != graphs_.end()) {
    cuda_check(cudaGraphLaunch(it->second, stream_), "cudaGraphLaunch");
    return true;
  }
  cuda_check(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
  capturing_ = true;
  return false;
}

void CudaBackend::end_step_ops() {
  if (!capturing_) return;
  capturing_ = false;
  cudaGraph_t graph = nullptr;
  cuda_check(cudaStreamEndCapture(stream_, &graph), "cudaStreamEndCapture");
  cudaGraphExec_t exec = nullptr;
  cudaError_t e = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  cuda_check(e, "cudaGraphInstantiate");
  graphs_[key_] = exec;
  cuda_check(cudaGraphLaunch(exec, stream_), "cudaGraphLaunch");  // capture ran nothing: run it now
}

void CudaBackend::drop_graphs() {
  for (auto& [k, g] : graphs_) cudaGraphExecDestroy(g);
  graphs_.clear();
}

}  // namespace gale
