// The communicator: the collectives tensor parallelism needs, behind one small interface so that
// the model and the engine never include mpi.h or nccl.h (gpt-fast's tp.py needs only an
// all-reduce and a gather; we add the broadcast of rank 0's step plan and a barrier).
// Implementations: one rank (single_comm.cpp), MPI over host memory (mpi_comm.cpp, built where
// CMake finds MPI), NCCL over device memory (nccl_comm.h, declared only: GPU builds with NCCL).
//
// A rank that dies must take the job down, never leave the others waiting in a collective.
// Under OpenMPI that is mpirun's job: when a rank exits on a signal (kill -9, a crash) or with a
// non-zero code before MPI_Finalize, mpirun kills every other rank of the job and exits non-zero
// with a message naming the rank ("mpirun noticed that process rank 1 ... exited on signal 9").
// So a collective here has no timeout of its own; tests/unit/tp_mpi_test.cpp checks the kill -9
// case ends the job within seconds.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace gale {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string name() const = 0;  // "single", "mpi"

  // data[i] = sum over the ranks of their data[i], on every rank (every rank passes n).
  virtual void all_reduce_sum(float* data, size_t n) = 0;
  // out = the ranks' `mine` in rank order; rank r contributes bytes[r] bytes (bytes.size() ==
  // size(), the same list on every rank), out holds their sum.
  virtual void all_gather(const void* mine, std::span<const size_t> bytes, void* out) = 0;
  // root's `bytes` bytes of data copied into data on every rank.
  virtual void broadcast(void* data, size_t bytes, int root) = 0;
  virtual void barrier() = 0;
  // Point to point (pipeline parallelism's activations): `bytes` bytes to rank `to`, or from
  // rank `from` (the sizes agree). Default: gale::Error (a communicator without them).
  virtual void send(const void* data, size_t bytes, int to);
  virtual void recv(void* data, size_t bytes, int from);
  // Ends the job at once with `code` on every rank (a rank that cannot go on while the others
  // wait in a collective). Single rank: std::exit.
  [[noreturn]] virtual void abort(int code) = 0;

  // A byte string of any length from root to every rank (its size first, then its bytes).
  void broadcast_bytes(std::vector<uint8_t>& data, int root);
};

// [begin, begin + count) of n items that rank `rank` of `size` owns: n / size each, the first
// n % size ranks one more (vocabulary rows; heads and MLP columns divide evenly or are refused).
struct ShardRange {
  int64_t begin = 0, count = 0;
};
ShardRange shard_range(int64_t n, int rank, int size);

// One rank: the collectives are copies (or nothing).
std::unique_ptr<Communicator> make_single_communicator();

// Whether this gale was built with MPI (CMake found it: tools/setup.sh installs OpenMPI).
bool mpi_built();
// The job's MPI_COMM_WORLD, initialized here (MPI_THREAD_SERIALIZED: the engine thread of
// `gale serve` calls the collectives, one thread at a time). Throws gale::Error without MPI.
// Destroying it calls MPI_Finalize, except while an exception unwinds: the non-zero exit that
// follows makes mpirun end the other ranks (MPI_Finalize would wait for them).
std::unique_ptr<Communicator> make_mpi_communicator();

}  // namespace gale
