// Times decode attention, prefill attention and the cuBLASLt GEMM on random data and prints
// each next to its floor: max(bytes / copy bandwidth, FLOPs / bf16 tensor-core peak).
// The two ceilings are measured here too (a device-to-device copy; the largest GEMM), so the
// floors are the card's own. Inputs are rotated among several copies when they would fit in L2.
//   cuda_kernels_bench [--bw GB/s] [--peak TFLOP/s] [--reps N]
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/decode_attention.cuh"
#include "kernels/cuda/gemm_lt.cuh"
#include "kernels/cuda/moe_grouped_gemm.cuh"
#include "kernels/cuda/moe_route.cuh"
#include "kernels/cuda/prefill_attention.cuh"

using namespace gale;

#define CK(call)                                                                                   \
  do {                                                                                             \
    cudaError_t e_ = (call);                                                                       \
    if (e_ != cudaSuccess) {                                                                       \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
      std::exit(1);                                                                                \
    }                                                                                              \
  } while (0)

static int g_reps = 50;

// Median time in ms of fn(rep) over g_reps runs after 5 warm-ups, timed with events.
static double time_ms(const std::function<void(int)>& fn) {
  for (int i = 0; i < 5; ++i) fn(i);
  CK(cudaDeviceSynchronize());
  std::vector<double> t;
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  for (int i = 0; i < g_reps; ++i) {
    CK(cudaEventRecord(a));
    fn(i);
    CK(cudaEventRecord(b));
    CK(cudaEventSynchronize(b));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  CK(cudaGetLastError());
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Random bf16 (as raw uint16) in [-1, 1) * scale, never zero.
static void* dev_random_bf16(size_t n, float scale, uint32_t seed) {
  std::vector<uint16_t> h(n);
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (auto& x : h) {
    float f = u(g) * scale;
    if (f == 0) f = 1e-3f;
    x = f32_to_bf16(f);
  }
  void* d = nullptr;
  CK(cudaMalloc(&d, n * 2));
  CK(cudaMemcpy(d, h.data(), n * 2, cudaMemcpyHostToDevice));
  return d;
}

struct Row {
  std::string name;
  double ms, floor_ms;
  std::string bound;
  double achieved;  // GB/s or TFLOP/s
};
static std::vector<Row> rows;

static void report(const std::string& name, double ms, double bytes, double flops, double bw, double peak) {
  const double t_mem = bytes / (bw * 1e9) * 1e3, t_fl = flops / (peak * 1e12) * 1e3;
  const bool mem = t_mem >= t_fl;
  rows.push_back({name, ms, std::max(t_mem, t_fl), mem ? "mem" : "flops",
                  mem ? bytes / (ms * 1e-3) / 1e9 : flops / (ms * 1e-3) / 1e12});
  std::printf("%-44s %9.4f ms  floor %9.4f ms (%s)\n", name.c_str(), ms, std::max(t_mem, t_fl), mem ? "mem" : "flops");
  std::fflush(stdout);
}

int main(int argc, char** argv) {
  double bw = 0, peak = 0;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--bw") && i + 1 < argc) bw = std::atof(argv[++i]);
    else if (!std::strcmp(argv[i], "--peak") && i + 1 < argc) peak = std::atof(argv[++i]);
    else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) g_reps = std::atoi(argv[++i]);
  }
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);

  cuda::GemmContext* ctx = nullptr;
  CK(cuda::gemm_context_create(&ctx));

  // Ceiling 1: device-to-device copy of 2 GiB (bytes read + written).
  {
    const size_t n = size_t(2) << 30;
    void *a, *b;
    CK(cudaMalloc(&a, n));
    CK(cudaMalloc(&b, n));
    CK(cudaMemset(a, 0x3c, n));
    double ms = time_ms([&](int) { CK(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice)); });
    const double copy = 2.0 * double(n) / (ms * 1e-3) / 1e9;
    std::printf("measured copy: %.0f GB/s\n", copy);
    if (bw <= 0) bw = copy;
    CK(cudaFree(a));
    CK(cudaFree(b));
  }
  // Ceiling 2: bf16 GEMM 8192^3 through cuBLASLt.
  {
    const int64_t n = 8192;
    void* x = dev_random_bf16(size_t(n * n), 1.0f, 1);
    void* w = dev_random_bf16(size_t(n * n), 1.0f, 2);
    void* y;
    CK(cudaMalloc(&y, size_t(n * n) * 2));
    cuda::GemmParams p{x, n, w, n, y, n, DType::BF16, n, n, n, false};
    double ms = time_ms([&](int) { CK(cuda::gemm_bf16(ctx, p, nullptr)); });
    const double tf = 2.0 * n * n * n / (ms * 1e-3) / 1e12;
    std::printf("measured bf16 GEMM 8192^3: %.0f TFLOP/s\n", tf);
    if (peak <= 0) peak = tf;
    cudaFree(x); cudaFree(w); cudaFree(y);
  }
  std::printf("floors use copy %.0f GB/s and bf16 %.0f TFLOP/s\n\n", bw, peak);

  // GEMMs: Llama-3-8B projections (qkv 6144x4096, down 4096x14336, gate_up 28672x4096).
  struct G { int64_t M, N, K; const char* what; };
  for (const G gs : {G{1, 6144, 4096, "qkv"}, G{1, 28672, 4096, "gate_up"}, G{1, 4096, 14336, "down"},
                     G{16, 28672, 4096, "gate_up"}, G{128, 28672, 4096, "gate_up"}, G{4096, 6144, 4096, "qkv"},
                     G{4096, 28672, 4096, "gate_up"}, G{4096, 4096, 14336, "down"}}) {
    const size_t wbytes = size_t(gs.N * gs.K) * 2;
    const int copies = wbytes < (size_t(prop.l2CacheSize) * 2) ? 4 : 1;  // defeat L2 for small weights
    std::vector<void*> ws;
    for (int c = 0; c < copies; ++c) ws.push_back(dev_random_bf16(size_t(gs.N * gs.K), 0.05f, 10 + c));
    void* x = dev_random_bf16(size_t(gs.M * gs.K), 1.0f, 3);
    void* y;
    CK(cudaMalloc(&y, size_t(gs.M * gs.N) * 2));
    double ms = time_ms([&](int r) {
      cuda::GemmParams p{x, gs.K, ws[size_t(r % copies)], gs.K, y, gs.N, DType::BF16, gs.M, gs.N, gs.K, false};
      CK(cuda::gemm_bf16(ctx, p, nullptr));
    });
    const double bytes = double(wbytes) + 2.0 * gs.M * gs.K + 2.0 * gs.M * gs.N, flops = 2.0 * gs.M * gs.N * gs.K;
    char name[96];
    std::snprintf(name, sizeof name, "gemm %s M=%lld N=%lld K=%lld", gs.what, (long long)gs.M, (long long)gs.N, (long long)gs.K);
    report(name, ms, bytes, flops, bw, peak);
    for (void* w : ws) cudaFree(w);
    cudaFree(x); cudaFree(y);
  }

  // MoE grouped GEMMs: Mixtral-8x7B (E = 8, top-2, hidden 4096, ffn 14336), routed from random
  // logits by moe_route. The floor counts the weights of the experts that got rows (read once)
  // plus the activations; FLOPs are those of the routed rows.
  {
  const int64_t E = 8, K = 2, H = 4096, I = 14336;
  std::vector<void*> gu_w, dn_w;  // a copy per expert: 8 x 352 MB, far beyond any L2
  gu_w.push_back(dev_random_bf16(size_t(2 * I * H), 0.02f, 50));
  dn_w.push_back(dev_random_bf16(size_t(H * I), 0.02f, 60));
  for (int64_t e = 1; e < E; ++e) {  // copies of expert 0 (random data on the host is slow)
    void *a, *b;
    CK(cudaMalloc(&a, size_t(2 * I * H) * 2));
    CK(cudaMalloc(&b, size_t(H * I) * 2));
    CK(cudaMemcpy(a, gu_w[0], size_t(2 * I * H) * 2, cudaMemcpyDeviceToDevice));
    CK(cudaMemcpy(b, dn_w[0], size_t(H * I) * 2, cudaMemcpyDeviceToDevice));
    gu_w.push_back(a);
    dn_w.push_back(b);
  }
  void **d_gu, **d_dn;
  CK(cudaMalloc(&d_gu, size_t(E) * sizeof(void*)));
  CK(cudaMalloc(&d_dn, size_t(E) * sizeof(void*)));
  CK(cudaMemcpy(d_gu, gu_w.data(), size_t(E) * sizeof(void*), cudaMemcpyHostToDevice));
  CK(cudaMemcpy(d_dn, dn_w.data(), size_t(E) * sizeof(void*), cudaMemcpyHostToDevice));
  for (const int64_t T : {int64_t(1), int64_t(16), int64_t(512)}) {
    const int64_t R = T * K;
    std::vector<float> hl(size_t(T * E));
    std::mt19937 g(40 + uint32_t(T));
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (auto& v : hl) v = nd(g);
    float* logits;
    int32_t *ids, *off, *slot, *perm;
    float* wts;
    CK(cudaMalloc(&logits, hl.size() * 4));
    CK(cudaMemcpy(logits, hl.data(), hl.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMalloc(&ids, size_t(R) * 4));
    CK(cudaMalloc(&wts, size_t(R) * 4));
    CK(cudaMalloc(&off, size_t(E + 1) * 4));
    CK(cudaMalloc(&slot, size_t(R) * 4));
    CK(cudaMalloc(&perm, size_t(R) * 4));
    cuda::MoeRouteParams rp{logits, E, T, E, K, true, ids, wts, off, slot, perm};
    const double route_ms = time_ms([&](int) { CK(cuda::moe_route(rp, nullptr)); });
    std::vector<int32_t> ho(size_t(E + 1));
    CK(cudaMemcpy(ho.data(), off, ho.size() * 4, cudaMemcpyDeviceToHost));
    int64_t used = 0;
    for (int64_t e = 0; e < E; ++e) used += ho[size_t(e + 1)] > ho[size_t(e)];
    char name[96];
    std::snprintf(name, sizeof name, "moe_route T=%lld E=8 K=2", (long long)T);
    report(name, route_ms, double(T * E) * 4 + double(R) * 16, 0, bw, peak);
    void* x = dev_random_bf16(size_t(T * H), 1.0f, 70);
    void* act = dev_random_bf16(size_t(R * I), 1.0f, 71);
    void* y;
    CK(cudaMalloc(&y, size_t(R * 2 * I) * 2));
    const int64_t hint = std::max<int64_t>(1, (R + E - 1) / E);
    struct Prod { const char* what; const void* in; int64_t ldx; const int32_t* rows; void** w; int64_t N, Kd; };
    for (const Prod pr : {Prod{"gate_up", x, H, perm, d_gu, 2 * I, H}, Prod{"down", act, I, nullptr, d_dn, H, I}}) {
      cuda::GroupedGemmParams p{pr.in, pr.ldx, pr.rows, const_cast<const void* const*>(pr.w), pr.Kd, off, y, pr.N,
                                E, R, pr.N, pr.Kd, hint};
      const double ms = time_ms([&](int) { CK(cuda::moe_grouped_gemm(p, nullptr)); });
      const double bytes = double(used) * double(pr.N * pr.Kd) * 2 + 2.0 * R * pr.Kd + 2.0 * R * pr.N;
      std::snprintf(name, sizeof name, "moe grouped %s T=%lld (%lld experts used) N=%lld K=%lld", pr.what,
                    (long long)T, (long long)used, (long long)pr.N, (long long)pr.Kd);
      report(name, ms, bytes, 2.0 * R * pr.N * pr.Kd, bw, peak);
    }
    cudaFree(x); cudaFree(act); cudaFree(y);
    cudaFree(logits); cudaFree(ids); cudaFree(wts); cudaFree(off); cudaFree(slot); cudaFree(perm);
  }
  for (void* w : gu_w) cudaFree(w);
  for (void* w : dn_w) cudaFree(w);
  cudaFree(d_gu); cudaFree(d_dn);
  }

  // Decode attention: Llama-3-8B layer (32 heads, 8 KV heads, head_dim 128), bf16 KV, block 16.
  struct D { int64_t batch, ctx; };
  for (const D d : {D{1, 4096}, D{1, 32768}, D{32, 4096}, D{128, 2048}, D{64, 8192}}) {
    const int64_t H = 32, KVH = 8, HD = 128, BS = 16;
    const int64_t blocks_per_seq = (d.ctx + BS - 1) / BS;
    const size_t kv_bytes = size_t(d.batch * blocks_per_seq * BS * KVH * HD) * 2;
    const int copies = kv_bytes * 2 < size_t(prop.l2CacheSize) * 4 ? 4 : 1;
    const int64_t nblocks = d.batch * blocks_per_seq * copies;
    void* k = dev_random_bf16(size_t(nblocks * BS * KVH * HD), 1.0f, 20);
    void* v = dev_random_bf16(size_t(nblocks * BS * KVH * HD), 1.0f, 21);
    // Block tables: a random permutation (real caches are fragmented).
    std::vector<int32_t> perm(static_cast<size_t>(nblocks));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), std::mt19937(5));
    int32_t *tab, *lens;
    CK(cudaMalloc(&tab, perm.size() * 4));
    CK(cudaMemcpy(tab, perm.data(), perm.size() * 4, cudaMemcpyHostToDevice));
    std::vector<int32_t> hl(size_t(d.batch), int32_t(d.ctx));
    CK(cudaMalloc(&lens, hl.size() * 4));
    CK(cudaMemcpy(lens, hl.data(), hl.size() * 4, cudaMemcpyHostToDevice));
    void* q = dev_random_bf16(size_t(d.batch * H * HD), 1.0f, 22);
    void* out;
    CK(cudaMalloc(&out, size_t(d.batch * H * HD) * 2));
    cuda::DecodeAttentionParams p{};
    p.q = q; p.q_dtype = DType::BF16; p.ldq = H * HD;
    p.k_cache = k; p.v_cache = v; p.kv_dtype = DType::BF16;
    p.max_blocks_per_seq = blocks_per_seq; p.seq_lens = lens; p.max_seq_len = d.ctx;
    p.n_seqs = d.batch; p.n_heads = H; p.n_kv_heads = KVH; p.head_dim = HD; p.block_size = BS;
    p.scale = 0.088f; p.out = out; p.out_dtype = DType::BF16; p.ldo = H * HD;
    void* ws = nullptr;
    const size_t wsb = cuda::decode_attention_workspace_size(p);
    if (wsb) CK(cudaMalloc(&ws, wsb));
    p.workspace = ws;
    double ms = time_ms([&](int r) {
      cuda::DecodeAttentionParams pr = p;
      pr.block_tables = tab + size_t(r % copies) * size_t(d.batch * blocks_per_seq);
      CK(cuda::decode_attention(pr, nullptr));
    });
    const double bytes = 2.0 * double(kv_bytes), flops = 4.0 * d.batch * H * d.ctx * HD;
    char name[96];
    std::snprintf(name, sizeof name, "decode attn batch=%lld ctx=%lld (32/8 heads, hd128)", (long long)d.batch, (long long)d.ctx);
    report(name, ms, bytes, flops, bw, peak);
    cudaFree(k); cudaFree(v); cudaFree(tab); cudaFree(lens); cudaFree(q); cudaFree(out); cudaFree(ws);
  }

  // Prefill attention: one causal prompt (and 8 x 512), Llama-3-8B heads.
  struct P { int64_t seqs, len; };
  for (const P pc : {P{1, 4096}, P{8, 512}, P{1, 16384}}) {
    const int64_t H = 32, KVH = 8, HD = 128, BS = 16;
    const int64_t bps = (pc.len + BS - 1) / BS, nblocks = pc.seqs * bps, T = pc.seqs * pc.len;
    void* k = dev_random_bf16(size_t(nblocks * BS * KVH * HD), 1.0f, 30);
    void* v = dev_random_bf16(size_t(nblocks * BS * KVH * HD), 1.0f, 31);
    void* q = dev_random_bf16(size_t(T * H * HD), 1.0f, 32);
    std::vector<int32_t> perm(static_cast<size_t>(nblocks));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), std::mt19937(6));
    std::vector<int32_t> cu(static_cast<size_t>(pc.seqs + 1)), st(size_t(pc.seqs), 0);
    for (int64_t s = 0; s <= pc.seqs; ++s) cu[size_t(s)] = int32_t(s * pc.len);
    int32_t *tab, *dcu, *dst;
    CK(cudaMalloc(&tab, perm.size() * 4));
    CK(cudaMemcpy(tab, perm.data(), perm.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMalloc(&dcu, cu.size() * 4));
    CK(cudaMemcpy(dcu, cu.data(), cu.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMalloc(&dst, st.size() * 4));
    CK(cudaMemcpy(dst, st.data(), st.size() * 4, cudaMemcpyHostToDevice));
    void* out;
    CK(cudaMalloc(&out, size_t(T * H * HD) * 2));
    cuda::PrefillAttentionParams p{};
    p.q = q; p.ldq = H * HD; p.k_cache = k; p.v_cache = v; p.block_tables = tab; p.max_blocks_per_seq = bps;
    p.cu_seqlens_q = dcu; p.start_pos = dst; p.max_q_len = pc.len; p.n_seqs = pc.seqs; p.n_heads = H;
    p.n_kv_heads = KVH; p.head_dim = HD; p.block_size = BS; p.scale = 0.088f; p.out = out;
    p.out_dtype = DType::BF16; p.ldo = H * HD;
    double ms = time_ms([&](int) { CK(cuda::prefill_attention(p, nullptr)); });
    // Causal: about half of the n² score matrix, QK and PV each 2·hd FLOPs per entry.
    const double flops = 4.0 * pc.seqs * H * HD * (double(pc.len) * (pc.len + 1) / 2);
    const double bytes = 2.0 * T * H * HD * 2 + 2.0 * nblocks * BS * KVH * HD * 2;
    char name[96];
    std::snprintf(name, sizeof name, "prefill attn %lldx%lld causal (32/8 heads, hd128)", (long long)pc.seqs, (long long)pc.len);
    report(name, ms, bytes, flops, bw, peak);
    cudaFree(k); cudaFree(v); cudaFree(q); cudaFree(tab); cudaFree(dcu); cudaFree(dst); cudaFree(out);
  }
  cuda::gemm_context_destroy(ctx);

  std::printf("\n| kernel | time ms | floor ms | floor/time | achieved |\n|---|---:|---:|---:|---:|\n");
  for (const auto& r : rows)
    std::printf("| %s | %.4f | %.4f | %.0f%% | %.0f %s |\n", r.name.c_str(), r.ms, r.floor_ms, 100.0 * r.floor_ms / r.ms,
                r.achieved, r.bound == "mem" ? "GB/s" : "TFLOP/s");
  return 0;
}
