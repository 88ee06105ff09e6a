// Measures this machine's rooflines, printed by `gale bench` next to the achieved figures.
#pragma once

#include <cstddef>
#include <cstdint>

namespace gale::cpu {

// Read bandwidth in GB/s (1e9 bytes/s): `threads` threads stream disjoint parts of a 1 GiB
// buffer (touched beforehand, so no page faults are timed); best of a few runs.
double measure_read_bandwidth_gbs(int threads);

// The same buffer kept for single timed passes: `gale bench` alternates decode steps with
// passes, because a shared VM's bandwidth swings by 2x within seconds (bench/RESULTS.md), so a
// best-of probe taken before the decode may see different memory than the decode did.
class ReadProbe {
 public:
  static constexpr size_t kBytes = size_t(1) << 30;
  explicit ReadProbe(int threads);
  ~ReadProbe();
  ReadProbe(const ReadProbe&) = delete;
  ReadProbe& operator=(const ReadProbe&) = delete;
  double pass_gbs();  // one timed read of the whole buffer, GB/s

 private:
  int threads_;
  uint64_t* buf_ = nullptr;
};

// f32 FMA peak in GFLOP/s (an FMA counts as 2 flops): `threads` threads run independent FMA
// chains held in registers, with the widest SIMD this CPU has; best of a few runs.
double measure_fma_peak_gflops(int threads);

}  // namespace gale::cpu
