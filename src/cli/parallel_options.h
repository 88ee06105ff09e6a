// --tp / --pp of the commands that serve requests (generate, batch, serve), --dp of gale batch,
// and the process's part in a job launched by mpirun: with --tp / --pp rank 0 runs the command
// and the other ranks follow its steps; with --dp every rank runs the command on its share.
//
//   ParallelRun par(o.parallel);                       // before the model: MPI, the group
//   LoadedModel lm = load_model(dir, backend_options(o.model, par), ...);
//   if (par.follower()) return par.follow(*lm.model);  // ranks 1..N-1: until rank 0 is done
//   ec.followers = par.followers();                    // rank 0's engine tells them each step
#pragma once
#include <CLI/CLI.hpp>

#include <memory>

#include "comm/comm.h"
#include "engine/step_followers.h"
#include "model/backend_factory.h"
#include "model/transformer.h"

namespace gale::cli {

struct ParallelOptions {
  int tp = 1;  // --tp: tensor-parallel ranks (mpirun -np must match)
  int pp = 1;  // --pp: pipeline stages (mpirun -np must match; not with --tp > 1 yet)
  int dp = 1;  // --dp: whole-model replicas splitting a batch job (gale batch only)
};

void add_parallel_options(CLI::App* sub, ParallelOptions& o);
// gale batch's --dp (replicas of the whole model, each running its share of the input).
void add_data_parallel_option(CLI::App* sub, ParallelOptions& o);

class ParallelRun {
 public:
  // Checks the flags and, for --tp > 1, joins the MPI job (gale::Error without MPI, or when
  // mpirun started another number of ranks).
  explicit ParallelRun(const ParallelOptions& o);
  // Rank 0, when no exception is unwinding: the other ranks are told to exit (shutdown), then
  // MPI is finalized. While one unwinds, neither: the non-zero exit makes mpirun end the job.
  ~ParallelRun();
  ParallelRun(const ParallelRun&) = delete;
  ParallelRun& operator=(const ParallelRun&) = delete;

  // The group for BackendOptions::tp; null for --tp 1.
  Communicator* group() const { return comm_.get(); }
  bool follower() const { return comm_ && !data_parallel_ && comm_->rank() != 0; }
  // Ranks 1..N-1: follows rank 0's steps until its shutdown (SIGINT and SIGTERM ignored: mpirun
  // forwards them to every rank, and rank 0 decides when the job ends, after draining).
  void follow(Transformer& model);
  // Whether the ranks go on to load the model: rank 0's `go`, broadcast (a command with nothing
  // to do tells the others before any of them loads; loading may run collectives, as the FP8 KV
  // calibration's forward does). `go` itself without a group.
  bool proceed(bool go);
  // Rank 0 of a group: what EngineConfig::followers takes; null otherwise.
  StepFollowers* followers() { return leader_.get(); }
  // --dp: this process's replica and their number (0 and 1 otherwise); barrier() waits for all.
  int replica() const { return data_parallel_ ? comm_->rank() : 0; }
  int replicas() const { return data_parallel_ ? comm_->size() : 1; }
  void barrier() { if (comm_) comm_->barrier(); }
  // The backend options of `b` with this run's group.
  BackendOptions with_group(BackendOptions b) const {
    if (!data_parallel_) (pipeline_ ? b.pp : b.tp) = comm_.get();
    return b;
  }

 private:
  std::unique_ptr<Communicator> comm_;
  std::unique_ptr<CommStepFollowers> leader_;
  bool pipeline_ = false;       // the group is --pp's stages, not --tp's ranks
  bool data_parallel_ = false;  // the group is --dp's replicas: each runs the whole command
  bool stopped_ = false;  // proceed(false) ended the followers already
};

}  // namespace gale::cli
