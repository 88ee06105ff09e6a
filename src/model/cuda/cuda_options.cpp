#include "model/cuda/cuda_options.h"

#include <algorithm>
#include <cstdlib>
#include <string>

#include "core/error.h"

namespace gale {

namespace {

// An on/off switch: unset or empty keeps the default (on unless said), "0" turns it off, "1" on.
bool env_switch(const char* name, bool fallback = true) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  const std::string s = v;
  if (s == "0") return false;
  if (s == "1") return true;
  throw Error(std::string(name) + "='" + s + "': expected 0 or 1");
}

// GALE_CUDA_FUSE: the fusions named, separated by commas (or spaces); unset means all of them.
void parse_fusions(CudaOptions& o) {
  const char* v = std::getenv("GALE_CUDA_FUSE");
  if (!v) return;
  o.fuse_rope = o.fuse_norm = o.fuse_silu = o.fuse_qkv = false;
  const std::string s = v;
  for (size_t b = 0; b < s.size();) {
    const size_t e = std::min(s.find_first_of(", ", b), s.size());
    const std::string item = s.substr(b, e - b);
    if (item == "rope") o.fuse_rope = true;
    else if (item == "norm") o.fuse_norm = true;
    else if (item == "silu") o.fuse_silu = true;
    else if (item == "qkv") o.fuse_qkv = true;
    else if (!item.empty())
      throw Error("GALE_CUDA_FUSE='" + s + "': '" + item + "' is not one of rope, norm, silu, qkv");
    b = e + 1;
  }
}

}  // namespace

CudaOptions cuda_options_from_env() {
  CudaOptions o;
  o.graphs = env_switch("GALE_CUDA_GRAPHS");
  o.gemv = env_switch("GALE_CUDA_GEMV");
  o.pdl = env_switch("GALE_CUDA_PDL");
  o.clusters = env_switch("GALE_CUDA_CLUSTERS");
  o.moe = env_switch("GALE_CUDA_MOE");
  o.gemv_rotate = env_switch("GALE_GEMV_ROTATE");
  o.fp8 = env_switch("GALE_CUDA_FP8", false);
  o.fp8_w8a8 = env_switch("GALE_CUDA_W8A8");
  o.fp8_groups = env_switch("GALE_CUDA_FP8_GROUPS");
  if (const char* v = std::getenv("GALE_GEMV_UNROLL"); v && *v) {
    const std::string s = v;
    if (s == "4" || s == "8") o.gemv_unroll = s[0] - '0';
    else if (s != "auto") throw Error("GALE_GEMV_UNROLL='" + s + "': expected 4, 8 or auto");
  }
  o.int_weights = env_switch("GALE_CUDA_INT", false);
  if (const char* v = std::getenv("GALE_INT_GEMM_MAX_M"); v && *v) {
    char* end = nullptr;
    const long m = std::strtol(v, &end, 10);
    if (*end || m < 0 || m > 65536)
      throw Error(std::string("GALE_INT_GEMM_MAX_M='") + v + "': expected a row count 0..65536");
    o.int_gemm_max_m = int(m);
  }
  parse_fusions(o);
  o.profile = std::getenv("GALE_PROFILE") != nullptr;
  return o;
}

}  // namespace gale
