// Paged attention kernels (decode and prefill) against cpu::paged_attention, over block tables
// out of order, GQA groups 1/4/8, head_dim 16/32/64/128, sliding windows, cached prefixes, odd
// lengths, and bf16 / f32 / E4M3 caches (E4M3: per-layer K and V scales, as --kv-cache-dtype fp8).
// Cache slots no valid read may touch hold NaN, and block-table entries of blocks wholly
// outside a sliding window are -1, so a stray read shows up as NaN or a fault (memcheck).
#include <algorithm>
#include <numeric>

#include "gpu_test_util.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/decode_attention.cuh"
#include "kernels/cuda/prefill_attention.cuh"

namespace gale {
namespace {

using namespace gale::test;

// E4M3 caches: K of N(0, 1) stored with |x| = 3 at 448 x 0.75, V with a scale that sends its
// small values into the format's subnormals.
constexpr float kKScale = 3.0f / 336.0f, kVScale = 0.05f;

struct Cache {
  int64_t bs, nkv, hd, max_blocks;
  DType dt;
  std::vector<int32_t> tables;      // [n_seqs, max_blocks]
  std::vector<uint8_t> k, v;        // host copies (the CPU reference reads these)
};

// Builds a paged cache for sequences of kv_lens tokens whose blocks are a random permutation;
// positions below lo[s] and at or past kv_lens[s] hold NaN.
Cache make_cache(std::mt19937& g, const std::vector<int64_t>& kv_lens, const std::vector<int64_t>& lo, int64_t bs,
                 int64_t nkv, int64_t hd, DType dt) {
  Cache c{bs, nkv, hd, 0, dt, {}, {}, {}};
  int64_t total = 0;
  for (int64_t L : kv_lens) {
    c.max_blocks = std::max(c.max_blocks, (L + bs - 1) / bs);
    total += (L + bs - 1) / bs;
  }
  const int64_t nblocks = total + 3;
  std::vector<int32_t> perm(static_cast<size_t>(nblocks));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), g);
  c.tables.assign(kv_lens.size() * size_t(c.max_blocks), -1);
  const int64_t row = nkv * hd, es = int64_t(dtype_size(dt));
  c.k.assign(size_t(nblocks * bs * row * es), 0xFF);
  c.v = c.k;
  std::normal_distribution<float> nd(0.0f, 1.0f);
  size_t next = 0;
  for (size_t s = 0; s < kv_lens.size(); ++s) {
    const int64_t L = kv_lens[s];
    for (int64_t b = 0; b < (L + bs - 1) / bs; ++b) {
      const int32_t blk = perm[next++];
      if ((b + 1) * bs > lo[s]) c.tables[s * size_t(c.max_blocks) + size_t(b)] = blk;  // dead blocks stay -1
      for (int64_t o = 0; o < bs; ++o) {
        const int64_t pos = b * bs + o;
        if (pos < lo[s] || pos >= L) continue;
        for (int64_t i = 0; i < row; ++i) {
          const size_t idx = size_t((int64_t(blk) * bs + o) * row + i);
          float kv[2] = {nd(g), nd(g)};
          for (int w = 0; w < 2; ++w) {
            uint8_t* dst = (w ? c.v : c.k).data() + idx * size_t(es);
            if (dt == DType::F32) std::memcpy(dst, &kv[w], 4);
            else if (dt == DType::F8_E4M3) *dst = f32_to_f8e4m3(kv[w] / (w ? kVScale : kKScale));
            else { uint16_t h = f32_to_bf16(kv[w]); std::memcpy(dst, &h, 2); }
          }
        }
      }
    }
  }
  return c;
}

struct DecodeCase { int64_t n_heads, n_kv, hd, bs, window; DType kv, q, out; std::vector<int64_t> lens; int64_t part; };

TEST(CudaDecodeAttention, MatchesCpuPagedAttention) {
  GALE_REQUIRE_GPU();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937 g(seed);
  const DecodeCase cases[] = {
      {8, 8, 64, 16, 0, DType::F32, DType::F32, DType::F32, {1, 17, 300}, 0},             // MHA (group 1)
      {32, 8, 128, 16, 0, DType::BF16, DType::BF16, DType::BF16, {1000, 1, 4097}, 0},    // group 4, split-K
      {16, 2, 128, 32, 0, DType::BF16, DType::F32, DType::F32, {77, 513, 2000, 5}, 64},  // group 8, forced split
      {28, 4, 128, 16, 100, DType::BF16, DType::F32, DType::F32, {999, 50, 101}, 0},     // group 7, sliding window
      {4, 1, 256, 16, 0, DType::BF16, DType::BF16, DType::F32, {129, 640}, 128},         // head_dim 256
      {4, 2, 16, 16, 0, DType::BF16, DType::BF16, DType::BF16, {300, 7}, 0},              // head_dim 16 (fixtures)
      {4, 2, 32, 16, 48, DType::F32, DType::F32, DType::F32, {90, 1}, 64},                // head_dim 32, window
      {32, 2, 64, 8, 37, DType::F32, DType::F32, DType::BF16, {38, 500}, 64},            // group 16 (two head tiles)
      // Up to 8 partitions merge inside a thread block cluster (Hopper), more through the
      // workspace: batch-1 decode (5 partitions), and a batch whose short sequence leaves
      // blocks of its cluster empty.
      {32, 8, 128, 16, 0, DType::BF16, DType::BF16, DType::BF16, {300}, 0},
      {8, 2, 128, 16, 0, DType::BF16, DType::BF16, DType::F32, {60, 1000, 129}, 128},
      // E4M3 caches: split-K through the workspace, clusters, a window, head_dim 64 and 256.
      {32, 8, 128, 16, 0, DType::F8_E4M3, DType::BF16, DType::BF16, {1000, 1, 4097}, 0},
      {32, 8, 128, 16, 0, DType::F8_E4M3, DType::BF16, DType::BF16, {300}, 0},
      {16, 2, 128, 32, 0, DType::F8_E4M3, DType::F32, DType::F32, {77, 513, 2000, 5}, 64},
      {28, 4, 128, 16, 100, DType::F8_E4M3, DType::F32, DType::F32, {999, 50, 101}, 0},
      {6, 2, 64, 16, 0, DType::F8_E4M3, DType::BF16, DType::F32, {1, 17, 700}, 0},
      {4, 1, 256, 16, 0, DType::F8_E4M3, DType::BF16, DType::F32, {129, 640}, 128},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(testing::Message() << "heads=" << c.n_heads << "/" << c.n_kv << " hd=" << c.hd << " window=" << c.window
                                    << " kv=" << dtype_name(c.kv) << " part=" << c.part);
    const int64_t S = int64_t(c.lens.size());
    std::vector<int64_t> lo(static_cast<size_t>(S));
    for (int64_t s = 0; s < S; ++s) lo[size_t(s)] = c.window > 0 ? std::max<int64_t>(0, c.lens[size_t(s)] - c.window) : 0;
    Cache kc = make_cache(g, c.lens, lo, c.bs, c.n_kv, c.hd, c.kv);
    const int64_t ldq = c.n_heads * c.hd + 8, ldo = c.n_heads * c.hd;
    std::vector<float> q = randn(size_t(S * ldq), g);
    DevBuf dq(size_t(S * ldq) * dtype_size(c.q));
    if (c.q == DType::F32) dq.upload(q);
    else { dq.upload(to_bf16(q)); q = round_bf16(q); }
    DevBuf dk = to_device(kc.k), dv = to_device(kc.v), dtab = to_device(kc.tables);
    std::vector<int32_t> lens32(c.lens.begin(), c.lens.end());
    DevBuf dlens = to_device(lens32);
    DevBuf dout(size_t(S * ldo) * dtype_size(c.out));
    cuda::DecodeAttentionParams p{};
    p.q = dq.p; p.q_dtype = c.q; p.ldq = ldq;
    p.k_cache = dk.p; p.v_cache = dv.p; p.kv_dtype = c.kv;
    p.block_tables = dtab.as<int32_t>(); p.max_blocks_per_seq = kc.max_blocks;
    p.seq_lens = dlens.as<int32_t>(); p.max_seq_len = *std::max_element(c.lens.begin(), c.lens.end());
    p.n_seqs = S; p.n_heads = c.n_heads; p.n_kv_heads = c.n_kv; p.head_dim = c.hd; p.block_size = c.bs;
    p.window = c.window; p.scale = 1.0f / std::sqrt(float(c.hd));
    p.out = dout.p; p.out_dtype = c.out; p.ldo = ldo; p.partition_size = c.part;
    p.k_scale = kKScale; p.v_scale = kVScale;  // read for E4M3 caches only
    DevBuf ws(cuda::decode_attention_workspace_size(p));
    p.workspace = ws.p;
    CUDA_OK(cuda::decode_attention(p, nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<float> ref(static_cast<size_t>(S * ldo));
    for (int64_t s = 0; s < S; ++s) {
      cpu::PagedKV pkv{kc.k.data(), kc.v.data(), c.kv, c.bs, c.n_kv, c.hd, kKScale, kVScale};
      std::span<const int32_t> tab(kc.tables.data() + s * kc.max_blocks, size_t(kc.max_blocks));
      cpu::paged_attention(q.data() + s * ldq, ldq, 1, c.n_heads, c.lens[size_t(s)] - 1, pkv, tab, c.window, p.scale,
                           ref.data() + s * ldo, ldo);
    }
    auto out = download_f32(dout, c.out, size_t(S * ldo));
    EXPECT_LT(rel_err(out, ref), c.out == DType::F32 ? 1e-4 : 6e-3);
  }
}

struct PrefillCase {
  int64_t n_heads, n_kv, hd, bs, window;
  DType out;
  std::vector<int64_t> n_q, start;
  DType kv = DType::BF16;
};

TEST(CudaPrefillAttention, MatchesCpuPagedAttention) {
  GALE_REQUIRE_GPU();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937 g(seed);
  const PrefillCase cases[] = {
      {8, 8, 64, 16, 0, DType::F32, {1, 63, 64, 65}, {0, 0, 0, 0}},                 // group 1, tile edges
      {32, 8, 128, 16, 0, DType::BF16, {200, 3}, {0, 500}},                         // group 4, cached prefix
      {16, 2, 128, 32, 0, DType::F32, {129, 77}, {31, 1000}},                       // group 8, chunked prefill
      {8, 2, 128, 16, 50, DType::F32, {300, 45}, {0, 170}},                         // sliding window
      {12, 4, 64, 8, 100, DType::BF16, {257}, {333}},                               // window + prefix, hd 64
      {4, 2, 16, 16, 0, DType::BF16, {150, 1}, {0, 40}},                            // hd 16 (fixture models)
      {4, 1, 32, 16, 48, DType::F32, {70, 5}, {20, 100}},                           // hd 32, window
      {8, 2, 128, 16, 0, DType::BF16, {520, 130, 7}, {0, 64, 900}},                 // 128-row blocks, varlen
      // E4M3 caches: every head_dim, a window, cached prefixes, tile edges.
      {8, 8, 64, 16, 0, DType::F32, {1, 63, 64, 65}, {0, 0, 0, 0}, DType::F8_E4M3},
      {32, 8, 128, 16, 0, DType::BF16, {200, 3}, {0, 500}, DType::F8_E4M3},
      {8, 2, 128, 16, 50, DType::F32, {300, 45}, {0, 170}, DType::F8_E4M3},
      {4, 2, 16, 16, 0, DType::BF16, {150, 1}, {0, 40}, DType::F8_E4M3},
      {4, 1, 32, 16, 48, DType::F32, {70, 5}, {20, 100}, DType::F8_E4M3},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(testing::Message() << "heads=" << c.n_heads << "/" << c.n_kv << " hd=" << c.hd << " window=" << c.window
                                    << " kv=" << dtype_name(c.kv));
    const int64_t S = int64_t(c.n_q.size());
    std::vector<int64_t> kv_lens(static_cast<size_t>(S)), lo(static_cast<size_t>(S));
    std::vector<int32_t> cu(size_t(S + 1), 0), start32(static_cast<size_t>(S));
    for (int64_t s = 0; s < S; ++s) {
      kv_lens[size_t(s)] = c.start[size_t(s)] + c.n_q[size_t(s)];
      lo[size_t(s)] = c.window > 0 ? std::max<int64_t>(0, c.start[size_t(s)] - c.window + 1) : 0;
      cu[size_t(s + 1)] = cu[size_t(s)] + int32_t(c.n_q[size_t(s)]);
      start32[size_t(s)] = int32_t(c.start[size_t(s)]);
    }
    const int64_t T = cu.back();
    Cache kc = make_cache(g, kv_lens, lo, c.bs, c.n_kv, c.hd, c.kv);
    const int64_t ldq = c.n_heads * c.hd + 16, ldo = c.n_heads * c.hd;
    std::vector<float> q = round_bf16(randn(size_t(T * ldq), g));
    DevBuf dq = to_device(to_bf16(q));
    DevBuf dk = to_device(kc.k), dv = to_device(kc.v), dtab = to_device(kc.tables);
    DevBuf dcu = to_device(cu), dstart = to_device(start32);
    DevBuf dout(size_t(T * ldo) * dtype_size(c.out));
    cuda::PrefillAttentionParams p{};
    p.q = dq.p; p.ldq = ldq; p.k_cache = dk.p; p.v_cache = dv.p;
    p.block_tables = dtab.as<int32_t>(); p.max_blocks_per_seq = kc.max_blocks;
    p.cu_seqlens_q = dcu.as<int32_t>(); p.start_pos = dstart.as<int32_t>();
    p.max_q_len = *std::max_element(c.n_q.begin(), c.n_q.end());
    p.n_seqs = S; p.n_heads = c.n_heads; p.n_kv_heads = c.n_kv; p.head_dim = c.hd; p.block_size = c.bs;
    p.window = c.window; p.scale = 1.0f / std::sqrt(float(c.hd));
    p.out = dout.p; p.out_dtype = c.out; p.ldo = ldo;
    p.kv_dtype = c.kv; p.k_scale = kKScale; p.v_scale = kVScale;
    CUDA_OK(cuda::prefill_attention(p, nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<float> ref(static_cast<size_t>(T * ldo));
    for (int64_t s = 0; s < S; ++s) {
      cpu::PagedKV pkv{kc.k.data(), kc.v.data(), c.kv, c.bs, c.n_kv, c.hd, kKScale, kVScale};
      std::span<const int32_t> tab(kc.tables.data() + s * kc.max_blocks, size_t(kc.max_blocks));
      cpu::paged_attention(q.data() + cu[size_t(s)] * ldq, ldq, c.n_q[size_t(s)], c.n_heads, c.start[size_t(s)], pkv, tab,
                           c.window, p.scale, ref.data() + cu[size_t(s)] * ldo, ldo);
    }
    auto out = download_f32(dout, c.out, size_t(T * ldo));
    // P is rounded to bf16 before P·V (as flash-attention does): bf16-operand tolerance.
    EXPECT_LT(rel_err(out, ref), 1e-2);
  }
}

}  // namespace
}  // namespace gale
