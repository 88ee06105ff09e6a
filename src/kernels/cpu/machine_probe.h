// Measures this machine's rooflines, printed by `gale bench` next to the achieved figures.
#pragma once

namespace gale::cpu {

// Read bandwidth in GB/s (1e9 bytes/s): `threads` threads stream disjoint parts of a 1 GiB
// buffer (touched beforehand, so no page faults are timed); best of a few runs.
double measure_read_bandwidth_gbs(int threads);

// f32 FMA peak in GFLOP/s (an FMA counts as 2 flops): `threads` threads run independent FMA
// chains held in registers, with the widest SIMD this CPU has; best of a few runs.
double measure_fma_peak_gflops(int threads);

}  // namespace gale::cpu
