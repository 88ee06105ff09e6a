// The CUDA backend's switches read from the environment (model/cuda/cuda_options.h): defaults,
// the values users set today, and one clear error naming the variable for anything else. Plain
// C++: runs in every build.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "core/error.h"
#include "model/cuda/cuda_options.h"

using namespace gale;

namespace {

const char* const kVars[] = {"GALE_CUDA_GRAPHS", "GALE_CUDA_GEMV",   "GALE_CUDA_PDL", "GALE_CUDA_CLUSTERS",
                             "GALE_CUDA_MOE",    "GALE_GEMV_ROTATE", "GALE_CUDA_FP8", "GALE_CUDA_W8A8",
                             "GALE_GEMV_UNROLL", "GALE_CUDA_FUSE",   "GALE_PROFILE",  "GALE_CUDA_INT",
                             "GALE_INT_GEMM_MAX_M"};

// Each test starts from an environment without the switches and leaves none behind.
class CudaOptionsEnv : public ::testing::Test {
 protected:
  void SetUp() override { clear(); }
  void TearDown() override { clear(); }
  static void clear() {
    for (const char* v : kVars) unsetenv(v);
  }
  // The error cuda_options_from_env() throws, or "" when it does not.
  static std::string error() {
    try {
      cuda_options_from_env();
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  }
};

TEST_F(CudaOptionsEnv, DefaultsAllOn) {
  const CudaOptions o = cuda_options_from_env();
  EXPECT_TRUE(o.graphs && o.gemv && o.pdl && o.clusters && o.moe && o.gemv_rotate && o.fp8_w8a8);
  EXPECT_FALSE(o.fp8);  // opt-in (GALE_CUDA_FP8=1) until the FP8 kernels have run on a GPU
  EXPECT_TRUE(o.fuse_rope && o.fuse_norm && o.fuse_silu && o.fuse_qkv);
  EXPECT_EQ(o.gemv_unroll, 0);
  EXPECT_FALSE(o.profile);
}

TEST_F(CudaOptionsEnv, EachSwitchOff) {
  bool CudaOptions::*fields[] = {&CudaOptions::graphs,   &CudaOptions::gemv, &CudaOptions::pdl,
                                 &CudaOptions::clusters, &CudaOptions::moe,  &CudaOptions::gemv_rotate};
  for (size_t i = 0; i < std::size(fields); ++i) {
    clear();
    setenv(kVars[i], "0", 1);
    const CudaOptions o = cuda_options_from_env();
    for (size_t j = 0; j < std::size(fields); ++j) EXPECT_EQ(o.*fields[j], i != j) << kVars[i] << " / " << kVars[j];
    setenv(kVars[i], "1", 1);
    EXPECT_TRUE(cuda_options_from_env().*fields[i]) << kVars[i];
    setenv(kVars[i], "", 1);  // empty: as if unset
    EXPECT_TRUE(cuda_options_from_env().*fields[i]) << kVars[i];
  }
}

// GALE_CUDA_FP8 is off unless set to 1; GALE_CUDA_W8A8 on unless set to 0.
TEST_F(CudaOptionsEnv, Fp8Switches) {
  setenv("GALE_CUDA_FP8", "1", 1);
  EXPECT_TRUE(cuda_options_from_env().fp8);
  setenv("GALE_CUDA_FP8", "0", 1);
  EXPECT_FALSE(cuda_options_from_env().fp8);
  setenv("GALE_CUDA_FP8", "", 1);
  EXPECT_FALSE(cuda_options_from_env().fp8);
  setenv("GALE_CUDA_W8A8", "0", 1);
  EXPECT_FALSE(cuda_options_from_env().fp8_w8a8);
  setenv("GALE_CUDA_FP8", "yes", 1);
  EXPECT_NE(error().find("GALE_CUDA_FP8='yes'"), std::string::npos) << error();
}

// Integer weights stay integer on the device unless GALE_CUDA_INT=0; GALE_INT_GEMM_MAX_M takes a
// row count (default 64).
TEST_F(CudaOptionsEnv, IntegerWeightSwitches) {
  CudaOptions o = cuda_options_from_env();
  EXPECT_FALSE(o.int_weights);  // opt-in (GALE_CUDA_INT=1) until the integer kernels have run on a GPU
  EXPECT_EQ(o.int_gemm_max_m, 64);
  setenv("GALE_CUDA_INT", "1", 1);
  setenv("GALE_INT_GEMM_MAX_M", "128", 1);
  o = cuda_options_from_env();
  EXPECT_TRUE(o.int_weights);
  EXPECT_EQ(o.int_gemm_max_m, 128);
  setenv("GALE_INT_GEMM_MAX_M", "0", 1);
  EXPECT_EQ(cuda_options_from_env().int_gemm_max_m, 0);
  for (const char* bad : {"-1", "64k", "1e9", "100000"}) {
    setenv("GALE_INT_GEMM_MAX_M", bad, 1);
    EXPECT_NE(error().find(std::string("GALE_INT_GEMM_MAX_M='") + bad + "'"), std::string::npos) << error();
  }
}

TEST_F(CudaOptionsEnv, MalformedSwitchNamesTheVariable) {
  setenv("GALE_CUDA_GRAPHS", "off", 1);
  EXPECT_NE(error().find("GALE_CUDA_GRAPHS='off'"), std::string::npos) << error();
  clear();
  setenv("GALE_GEMV_ROTATE", "2", 1);
  EXPECT_NE(error().find("GALE_GEMV_ROTATE"), std::string::npos) << error();
}

TEST_F(CudaOptionsEnv, GemvUnroll) {
  setenv("GALE_GEMV_UNROLL", "4", 1);
  EXPECT_EQ(cuda_options_from_env().gemv_unroll, 4);
  setenv("GALE_GEMV_UNROLL", "8", 1);
  EXPECT_EQ(cuda_options_from_env().gemv_unroll, 8);
  setenv("GALE_GEMV_UNROLL", "auto", 1);
  EXPECT_EQ(cuda_options_from_env().gemv_unroll, 0);
  setenv("GALE_GEMV_UNROLL", "16", 1);
  EXPECT_NE(error().find("GALE_GEMV_UNROLL='16'"), std::string::npos) << error();
}

TEST_F(CudaOptionsEnv, Fusions) {
  setenv("GALE_CUDA_FUSE", "rope,qkv", 1);
  CudaOptions o = cuda_options_from_env();
  EXPECT_TRUE(o.fuse_rope && o.fuse_qkv);
  EXPECT_FALSE(o.fuse_norm || o.fuse_silu);
  setenv("GALE_CUDA_FUSE", "", 1);  // empty: none
  o = cuda_options_from_env();
  EXPECT_FALSE(o.fuse_rope || o.fuse_norm || o.fuse_silu || o.fuse_qkv);
  setenv("GALE_CUDA_FUSE", "norm, silu", 1);
  o = cuda_options_from_env();
  EXPECT_TRUE(o.fuse_norm && o.fuse_silu);
  EXPECT_FALSE(o.fuse_rope || o.fuse_qkv);
  setenv("GALE_CUDA_FUSE", "rope,nrom", 1);
  EXPECT_NE(error().find("GALE_CUDA_FUSE"), std::string::npos) << error();
  EXPECT_NE(error().find("'nrom'"), std::string::npos) << error();
}

TEST_F(CudaOptionsEnv, ProfileWhenSetAtAll) {
  setenv("GALE_PROFILE", "1", 1);
  EXPECT_TRUE(cuda_options_from_env().profile);
}

}  // namespace
