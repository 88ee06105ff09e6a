// Tensor and pipeline parallelism across processes (mpirun -np N gale generate|batch|serve ...
// --tp N or --pp N): rank 0 runs the whole engine (tokenizer, scheduler, sampling, front end)
// and broadcasts each step's plan; ranks 1..N-1 only run the model's forward over their shards
// or stages, as rank 0's plan says, so that their collectives (Backend::reduce_add,
// all_gather_columns) and transfers (send_to_stage / recv_from_stage) meet rank 0's.
//
// The protocol is one broadcast of a byte string per message, from rank 0, in this order:
//   start (KV blocks, tokens per block)  step*  end     -- one per Engine
//   ... shutdown                                        -- once, when rank 0's command is done
// A step carries the block copies and, per sequence, its start position, RoPE length, whether
// it wants logits, its new token ids and its block table: what Engine::launch hands
// Transformer::forward, nothing more (the rotary tables and the plan are rebuilt from it).
#pragma once
#include <cstdint>
#include <vector>

#include "comm/comm.h"
#include "engine/engine.h"

namespace gale {

// Rank 0's side: the engine's StepFollowers over the communicator.
class CommStepFollowers final : public StepFollowers {
 public:
  explicit CommStepFollowers(Communicator& comm) : comm_(comm) {}
  void start(int64_t num_blocks, int64_t block_size) override;
  void step(std::span<const std::pair<int32_t, int32_t>> copies, std::span<const SeqStep> steps) override;
  void end() override;
  // The command is done: follow_steps returns on every other rank.
  void shutdown();

 private:
  void send(std::vector<int64_t>& msg);
  Communicator& comm_;
  std::vector<int64_t> msg_;
  std::vector<uint8_t> bytes_;
};

// Ranks 1..N-1: runs rank 0's steps with `model` (this rank's shard, loaded as rank 0's was)
// over KV caches of its own until rank 0's shutdown. A forward that fails here cannot be
// matched by the other ranks' collectives: the error is printed and the job aborted.
void follow_steps(Transformer& model, Communicator& comm);

}  // namespace gale
