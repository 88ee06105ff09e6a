#include "cli/parallel_options.h"

#include <csignal>
#include <cstdio>
#include <exception>

#include "core/error.h"

namespace gale::cli {

void add_parallel_options(CLI::App* sub, ParallelOptions& o) {
  sub->add_option("--tp", o.tp,
                  "Tensor-parallel ranks: launch as mpirun -np N gale ... --tp N (rank 0 runs the command, "
                  "the others hold their shard of every layer; CPU only for now)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--pp", o.pp,
                  "Pipeline stages: launch as mpirun -np N gale ... --pp N (each rank holds a range of layers; "
                  "rank 0 runs the command; CPU only, not with --tp yet)")
      ->check(CLI::PositiveNumber);
}

void add_data_parallel_option(CLI::App* sub, ParallelOptions& o) {
  sub->add_option("--dp", o.dp,
                  "Replicas of the whole model: launch as mpirun -np N gale batch ... --dp N; each runs every N-th "
                  "request of the input and appends to the one output file (rerun to resume, as with one)")
      ->check(CLI::PositiveNumber);
}

ParallelRun::ParallelRun(const ParallelOptions& o) {
  if (int(o.tp > 1) + int(o.pp > 1) + int(o.dp > 1) > 1)
    throw Error("--tp " + std::to_string(o.tp) + ", --pp " + std::to_string(o.pp) + ", --dp " + std::to_string(o.dp) +
                ": combining tensor, pipeline and data parallelism is not implemented yet (use one of them)");
  if (o.tp == 1 && o.pp == 1 && o.dp == 1) return;
  const std::string flag = o.tp > 1   ? "--tp " + std::to_string(o.tp)
                           : o.pp > 1 ? "--pp " + std::to_string(o.pp)
                                      : "--dp " + std::to_string(o.dp);
  const int n = o.tp * o.pp * o.dp;
  if (!mpi_built())
    throw Error(flag + " needs MPI, and this gale was built without it: install OpenMPI "
                "(tools/setup.sh: libopenmpi-dev openmpi-bin), configure again, and launch with mpirun -np " +
                std::to_string(n));
  comm_ = make_mpi_communicator();
  pipeline_ = o.pp > 1;
  data_parallel_ = o.dp > 1;
  if (comm_->size() != n) {
    const std::string msg = flag + " but mpirun started " + std::to_string(comm_->size()) +
                            " rank(s): launch with mpirun -np " + std::to_string(n);
    // Every rank sees the same mismatch and throws; none waits in a collective.
    throw Error(msg);
  }
  if (comm_->rank() == 0 && !data_parallel_) leader_ = std::make_unique<CommStepFollowers>(*comm_);
}

ParallelRun::~ParallelRun() {
  if (leader_ && !stopped_ && std::uncaught_exceptions() == 0) {
    try {
      leader_->shutdown();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "gale: the tensor-parallel ranks were not told to exit: %s\n", e.what());
    }
  }
}

void ParallelRun::follow(Transformer& model) {
  std::signal(SIGINT, SIG_IGN);
  std::signal(SIGTERM, SIG_IGN);
  follow_steps(model, *comm_);
}

bool ParallelRun::proceed(bool go) {
  if (!comm_ || data_parallel_) return go;  // replicas load their own models
  uint8_t flag = go ? 1 : 0;
  comm_->broadcast(&flag, 1, 0);
  if (!flag) stopped_ = true;
  return flag != 0;
}

}  // namespace gale::cli
