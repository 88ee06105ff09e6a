// matmul on the Llama-3.2-1B linear shapes, bf16 weights, against this machine's rooflines:
// decode (M = 1) in GB/s of weights streamed vs measured read bandwidth, prefill (M = 128)
// in GFLOP/s vs measured FMA peak.
//
//   matmul_bench [--isa avx512|avx2|scalar|all] [--threads N] [--only decode|prefill|layers] [--quick]
//                [--weights bf16|int8|int4]
// --weights int8 / int4: decode over integer weights (INT8 per channel; INT4 groups of 128 with
// zero points), GB/s of codes + scales + zero points streamed; "hot" repeats one matrix that
// stays in L2, the kernel's own rate without the memory.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <ctime>
#include <vector>

#include "core/dtype.h"
#include "core/thread_pool.h"
#include "kernels/cpu/machine_probe.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/matmul_isa.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Shape {
  const char* name;
  int64_t N, K;
};

// Llama-3.2-1B: hidden 2048, 32 q heads / 8 kv heads of 64, MLP 8192, vocab 128256 (tied).
const Shape kShapes[] = {
    {"q_proj/o_proj", 2048, 2048}, {"k_proj/v_proj", 512, 2048}, {"gate/up_proj", 8192, 2048},
    {"down_proj", 2048, 8192},     {"lm_head", 128256, 2048},
};

uint64_t g_rng = 0x243f6a8885a308d3ull;
float next_float() {  // xorshift64*, uniform in [-1, 1)
  g_rng ^= g_rng >> 12, g_rng ^= g_rng << 25, g_rng ^= g_rng >> 27;
  return float((g_rng * 0x2545f4914f6cdd1dull) >> 40) / float(1 << 23) - 1.0f;
}

std::vector<uint16_t> random_bf16(size_t n) {
  std::vector<uint16_t> w(n);
  for (auto& v : w) v = gale::f32_to_bf16(next_float() * 0.05f);
  return w;
}

double cpu_seconds() {  // of the whole process, all threads
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}

double seconds(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string g_weights = "bf16";

// An integer matrix of random codes: I8 per channel, or U4 in groups of 128 with zero points.
struct IntMatrix {
  std::vector<uint8_t> codes, zeros;
  std::vector<float> scales;
  gale::cpu::WeightScales ws;
  gale::DType dt;
  size_t bytes;
};
IntMatrix random_int(const Shape& s, bool u4) {
  IntMatrix m;
  const int64_t spr = u4 ? s.K / 128 : 1;
  m.codes.resize(size_t(u4 ? s.N * s.K / 2 : s.N * s.K));
  for (auto& b : m.codes) b = uint8_t(next_float() * 127.0f);
  m.scales.resize(size_t(s.N * spr));
  for (auto& v : m.scales) v = 0.001f + 0.01f * std::abs(next_float());
  if (u4) m.zeros.assign(size_t(s.N * spr), 8);
  m.ws = {m.scales.data(), 1, u4 ? 128 : s.K, spr, u4 ? m.zeros.data() : nullptr, u4};
  m.dt = u4 ? gale::DType::U8 : gale::DType::I8;
  m.bytes = m.codes.size() + m.scales.size() * 4 + m.zeros.size();
  return m;
}

void bench_decode_int(const Shape& s, bool quick) {
  const bool u4 = g_weights == "int4";
  const size_t bytes = random_int({s.name, 1, s.K}, u4).bytes * size_t(s.N);
  const size_t footprint = quick ? (size_t(128) << 20) : (size_t(512) << 20);
  const size_t copies = std::max<size_t>(1, (footprint + bytes - 1) / bytes);
  std::vector<IntMatrix> ws;
  for (size_t c = 0; c < copies; ++c) ws.push_back(random_int(s, u4));
  std::vector<float> x(size_t(s.K)), y(size_t(s.N));
  for (auto& v : x) v = next_float();
  auto run = [&](const IntMatrix& m) {
    gale::cpu::matmul(x.data(), s.K, 1, s.K, m.codes.data(), m.dt, s.N, nullptr, y.data(), s.N, false, m.ws);
  };
  for (const IntMatrix& m : ws) run(m);
  const double budget = quick ? 0.15 : 0.5;
  for (bool hot : {false, true}) {
    size_t calls = 0;
    auto t0 = Clock::now();
    do {
      run(ws[hot ? 0 : calls % copies]);
      ++calls;
    } while (calls < copies || seconds(t0) < budget);
    const double t = seconds(t0) / double(calls);
    std::printf("  M=1    %-14s N=%-6lld K=%-5lld %s %s %9.1f us %8.1f GB/s %8.1f G weights/s\n", s.name,
                (long long)s.N, (long long)s.K, g_weights.c_str(), hot ? "hot " : "cold", t * 1e6,
                double(bytes) / t / 1e9, double(s.N * s.K) / t / 1e9);
  }
}

// Decode: cycles through enough copies of W that they cannot stay in the last-level cache,
// as the layers of a real model don't.
void bench_decode(const Shape& s, bool quick) {
  if (g_weights != "bf16") return bench_decode_int(s, quick);
  const size_t n = size_t(s.N * s.K), bytes = n * 2;
  const size_t footprint = quick ? (size_t(128) << 20) : (size_t(512) << 20);
  const size_t copies = std::max<size_t>(1, (footprint + bytes - 1) / bytes);
  std::vector<std::vector<uint16_t>> ws;
  for (size_t c = 0; c < copies; ++c) ws.push_back(random_bf16(n));
  std::vector<float> x(size_t(s.K)), y(size_t(s.N));
  for (auto& v : x) v = next_float();
  for (size_t c = 0; c < copies; ++c)  // warm-up pass
    gale::cpu::matmul(x.data(), s.K, 1, s.K, ws[c].data(), gale::DType::BF16, s.N, nullptr, y.data(), s.N);
  const double budget = quick ? 0.15 : 0.5;
  size_t calls = 0;
  auto t0 = Clock::now();
  do {
    gale::cpu::matmul(x.data(), s.K, 1, s.K, ws[calls % copies].data(), gale::DType::BF16, s.N,
                      nullptr, y.data(), s.N);
    ++calls;
  } while (calls < copies || seconds(t0) < budget);
  double t = seconds(t0) / double(calls);
  std::printf("  M=1    %-14s N=%-6lld K=%-5lld %9.1f us %8.1f GB/s %8.1f GFLOP/s\n", s.name,
              (long long)s.N, (long long)s.K, t * 1e6, double(bytes) / t / 1e9,
              2.0 * double(n) / t / 1e9);
}

void bench_prefill(const Shape& s, int64_t M, bool quick) {
  const size_t n = size_t(s.N * s.K);
  std::vector<uint16_t> w = random_bf16(n);
  std::vector<float> x(size_t(M * s.K)), y(size_t(M * s.N));
  for (auto& v : x) v = next_float();
  gale::cpu::matmul(x.data(), s.K, M, s.K, w.data(), gale::DType::BF16, s.N, nullptr, y.data(), s.N);
  const double budget = quick ? 0.1 : 0.4;
  int calls = 0;
  auto t0 = Clock::now();
  do {
    gale::cpu::matmul(x.data(), s.K, M, s.K, w.data(), gale::DType::BF16, s.N, nullptr, y.data(), s.N);
    ++calls;
  } while (seconds(t0) < budget);
  double t = seconds(t0) / calls;
  std::printf("  M=%-4lld %-14s N=%-6lld K=%-5lld %9.1f us %8.1f GB/s %8.1f GFLOP/s\n", (long long)M,
              s.name, (long long)s.N, (long long)s.K, t * 1e6, double(n * 2) / t / 1e9,
              2.0 * double(M) * double(n) / t / 1e9);
}

// One transformer layer's products at M rows (q, k, v, o, gate, up, down of Llama-3.2-1B),
// cycling through enough layers that the weights come from DRAM, as in a real prefill.
// The time is the best of a few passes over all layers; GFLOP/s counts 2·M·N·K per product.
void bench_layers(int64_t M, bool quick) {
  struct Mat { int64_t N, K; };
  const Mat mats[] = {{2048, 2048}, {512, 2048}, {512, 2048}, {2048, 2048},
                      {8192, 2048}, {8192, 2048}, {2048, 8192}};
  int64_t per_layer = 0;
  for (const Mat& m : mats) per_layer += m.N * m.K;
  const int layers = quick ? 3 : 6;  // 3 layers = 365 MB of bf16 weights, well past the L3
  std::vector<std::vector<uint16_t>> w;
  for (int l = 0; l < layers; ++l)
    for (const Mat& m : mats) w.push_back(random_bf16(size_t(m.N * m.K)));
  std::vector<float> x(size_t(M * 8192)), y(size_t(M * 8192)), y2(size_t(M * 8192));
  for (auto& v : x) v = next_float();
  double best = 1e30, best_cpu = 1e30;
  for (int pass = 0; pass < (quick ? 3 : 5); ++pass) {
    const double c0 = cpu_seconds();
    auto t0 = Clock::now();
    for (int l = 0; l < layers; ++l)
      for (size_t i = 0; i < 7; ++i)
        gale::cpu::matmul(x.data(), mats[i].K, M, mats[i].K, w[size_t(l) * 7 + i].data(), gale::DType::BF16,
                          mats[i].N, nullptr, i == 5 ? y2.data() : y.data(), mats[i].N);
    best = std::min(best, seconds(t0) / layers);
    best_cpu = std::min(best_cpu, (cpu_seconds() - c0) / layers);
  }
  const double flop = 2.0 * double(M) * double(per_layer);
  // CPU time, per thread: on a shared machine it leaves out the time other processes ran on
  // these cores (not time stolen by the host), so it is the steadier figure for 1 thread.
  std::printf("  M=%-4lld layer (7 products)       %9.1f us %8.1f GFLOP/s wall, %8.1f GFLOP/s of CPU time\n",
              (long long)M, best * 1e6, flop / best / 1e9, flop / (best_cpu / gale::num_threads()) / 1e9);
}

double dispatch_us() {
  const int reps = 20000;
  auto t0 = Clock::now();
  for (int r = 0; r < reps; ++r) gale::parallel_for(gale::num_threads(), [](int64_t, int64_t, int) {});
  return seconds(t0) / reps * 1e6;
}

}  // namespace

int main(int argc, char** argv) {
  std::string isa;
  std::string only;
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--isa") && i + 1 < argc) isa = argv[++i];
    else if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) gale::set_num_threads(std::atoi(argv[++i]));
    else if (!std::strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
    else if (!std::strcmp(argv[i], "--quick")) quick = true;
    else if (!std::strcmp(argv[i], "--weights") && i + 1 < argc) g_weights = argv[++i];
    else {
      std::fprintf(stderr, "usage: %s [--isa avx512|avx2|scalar|all] [--threads N] [--only decode|prefill|layers] [--quick]\n", argv[0]);
      return 2;
    }
  }
  const int threads = gale::num_threads();
  std::printf("threads %d\n", threads);
  std::printf("floor: read bandwidth %.1f GB/s, f32 FMA peak %.1f GFLOP/s, parallel_for %.2f us/call\n",
              gale::cpu::measure_read_bandwidth_gbs(threads), gale::cpu::measure_fma_peak_gflops(threads),
              dispatch_us());
  std::vector<std::string> isas;
  if (isa == "all") isas = gale::cpu::matmul_isas_available();
  else if (!isa.empty()) isas = {isa};
  else isas = {gale::cpu::matmul_isa()};
  for (const std::string& name : isas) {
    try {
      gale::cpu::set_matmul_isa(name);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s\n", e.what());
      return 1;
    }
    std::printf("isa %s\n", gale::cpu::matmul_isa());
    if (only.empty() || only == "decode")
      for (const Shape& s : kShapes) bench_decode(s, quick);
    if (only == "layers") {
      bench_layers(128, quick);
      continue;
    }
    if (only != "decode")
      for (const Shape& s : kShapes) {
        if (name == "scalar" && s.N > 8192) continue;  // minutes; nothing to learn
        bench_prefill(s, 128, quick);
      }
  }
  return 0;
}
