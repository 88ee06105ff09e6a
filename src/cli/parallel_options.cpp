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

ParallelRun::ParallelRun(const ParallelOptions& o) {
  if (o.tp > 1 && o.pp > 1)
    throw Error("--tp " + std::to_string(o.tp) + " with --pp " + std::to_string(o.pp) +
                ": combining tensor and pipeline parallelism is not implemented yet (use one of them)");
  if (o.tp == 1 && o.pp == 1) return;
  const std::string flag = o.tp > 1 ? "--tp " + std::to_string(o.tp) : "--pp " + std::to_string(o.pp);
  const int n = o.tp * o.pp;
  if (!mpi_built())
    throw Error(flag + " needs MPI, and this gale was built without it: install OpenMPI "
                "(tools/setup.sh: libopenmpi-dev openmpi-bin), configure again, and launch with mpirun -np " +
                std::to_string(n));
  comm_ = make_mpi_communicator();
  pipeline_ = o.pp > 1;
  if (comm_->size() != n) {
    const std::string msg = flag + " but mpirun started " + std::to_string(comm_->size()) +
                            " rank(s): launch with mpirun -np " + std::to_string(n);
    // Every rank sees the same mismatch and throws; none waits in a collective.
    throw Error(msg);
  }
  if (comm_->rank() == 0) leader_ = std::make_unique<CommStepFollowers>(*comm_);
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
  if (!comm_) return go;
  uint8_t flag = go ? 1 : 0;
  comm_->broadcast(&flag, 1, 0);
  if (!flag) stopped_ = true;
  return flag != 0;
}

}  // namespace gale::cli
