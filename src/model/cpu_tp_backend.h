// The CPU backend of one tensor-parallel rank: CpuBackend's ops over this rank's shard of the
// weights (model/transforms.h shard_tensor_parallel), with the two collectives of a
// tensor-parallel step through the communicator (comm/comm.h; MPI between processes):
//   - reduce_add: the row-parallel products (o, down) leave each rank a partial sum of the
//     block's output; they are summed over the ranks (all-reduce) and added into the residual;
//   - all_gather_columns: each rank's columns of the vocabulary-parallel LM head's logits.
#pragma once
#include <vector>

#include "comm/comm.h"
#include "model/cpu_backend.h"

namespace gale {

class CpuTpBackend final : public CpuBackend {
 public:
  // comm outlives the backend.
  CpuTpBackend(bool bf16_activations, Communicator& comm) : CpuBackend(bf16_activations), comm_(comm) {}
  std::string name() const override;
  bool partial_residuals() const override { return true; }
  void reduce_add(Act partial, Act x) override;
  void all_gather_columns(Act part, Act full) override;

 private:
  Communicator& comm_;
  std::vector<float> packed_, gathered_cols_;
};

// One stage of a pipeline (--pp): CpuBackend over the stage's layers, the residual stream sent
// to the next stage and the logits back to stage 0 through the communicator's send / recv (the
// stage is the rank).
class CpuPipelineBackend final : public CpuBackend {
 public:
  CpuPipelineBackend(bool bf16_activations, Communicator& comm) : CpuBackend(bf16_activations), comm_(comm) {}
  std::string name() const override;
  int pipeline_stage() const override { return comm_.rank(); }
  int pipeline_stages() const override { return comm_.size(); }
  void send_to_stage(Act x, int stage) override;
  void recv_from_stage(Act x, int stage) override;

 private:
  Communicator& comm_;
};

}  // namespace gale
