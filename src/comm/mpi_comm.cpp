// MPI_COMM_WORLD as a Communicator (host memory: the CPU backend's tensor parallelism, and the
// launch of every rank). Built only where CMake found MPI (GALE_HAVE_MPI); elsewhere
// make_mpi_communicator says how to get it.
#include <exception>
#include <string>

#include "comm/comm.h"
#include "core/error.h"

#ifdef GALE_HAVE_MPI
// The C API only: OpenMPI's (and MPICH's) deprecated C++ bindings would need libmpi_cxx.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#include <algorithm>
#include <climits>
#endif

namespace gale {

#ifdef GALE_HAVE_MPI

namespace {

void mpi_check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  throw Error(std::string("MPI ") + what + " failed: " + std::string(msg, size_t(len)));
}

// MPI counts are int: larger buffers go in pieces of at most 1 GiB.
constexpr size_t kPiece = size_t(1) << 30;

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator() {
    int inited = 0;
    MPI_Initialized(&inited);
    if (inited) throw Error("MPI is initialized already (one communicator per process)");
    int provided = 0;
    mpi_check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided), "MPI_Init_thread");
    if (provided < MPI_THREAD_SERIALIZED) {
      MPI_Finalize();
      throw Error("this MPI does not support MPI_THREAD_SERIALIZED (gale serve calls MPI from its engine thread)");
    }
    // Errors come back as codes (thrown as gale::Error) instead of MPI's default abort, so the
    // message names the operation; a lost rank still ends the job through mpirun.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
  }
  ~MpiCommunicator() override {
    // While an exception unwinds, the other ranks may be waiting in a collective, and
    // MPI_Finalize would wait for them: leave it out, and the non-zero exit ends the job.
    if (std::uncaught_exceptions() == 0) MPI_Finalize();
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "mpi"; }

  void all_reduce_sum(float* data, size_t n) override {
    for (size_t i = 0; i < n; i += kPiece / sizeof(float)) {
      const size_t m = std::min(n - i, kPiece / sizeof(float));
      mpi_check(MPI_Allreduce(MPI_IN_PLACE, data + i, int(m), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
    }
  }
  void all_gather(const void* mine, std::span<const size_t> bytes, void* out) override {
    GALE_ASSERT(bytes.size() == size_t(size_));
    std::vector<int> counts(bytes.size()), displs(bytes.size());
    size_t at = 0;
    for (size_t r = 0; r < bytes.size(); ++r) {
      if (bytes[r] > size_t(INT_MAX) || at > size_t(INT_MAX)) throw Error("all_gather of more than 2 GiB");
      counts[r] = int(bytes[r]);
      displs[r] = int(at);
      at += bytes[r];
    }
    mpi_check(MPI_Allgatherv(mine, counts[size_t(rank_)], MPI_BYTE, out, counts.data(), displs.data(), MPI_BYTE,
                             MPI_COMM_WORLD),
              "MPI_Allgatherv");
  }
  void broadcast(void* data, size_t bytes, int root) override {
    auto* p = static_cast<uint8_t*>(data);
    for (size_t i = 0; i < bytes; i += kPiece)
      mpi_check(MPI_Bcast(p + i, int(std::min(bytes - i, kPiece)), MPI_BYTE, root, MPI_COMM_WORLD), "MPI_Bcast");
  }
  void barrier() override { mpi_check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier"); }
  void send(const void* data, size_t bytes, int to) override {
    const auto* p = static_cast<const uint8_t*>(data);
    for (size_t i = 0; i < bytes; i += kPiece)
      mpi_check(MPI_Send(p + i, int(std::min(bytes - i, kPiece)), MPI_BYTE, to, 0, MPI_COMM_WORLD), "MPI_Send");
  }
  void recv(void* data, size_t bytes, int from) override {
    auto* p = static_cast<uint8_t*>(data);
    for (size_t i = 0; i < bytes; i += kPiece)
      mpi_check(MPI_Recv(p + i, int(std::min(bytes - i, kPiece)), MPI_BYTE, from, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE),
                "MPI_Recv");
  }
  [[noreturn]] void abort(int code) override {
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);  // MPI_Abort does not return; if it did, still never go on
  }

 private:
  int rank_ = 0, size_ = 1;
};

}  // namespace

bool mpi_built() { return true; }
std::unique_ptr<Communicator> make_mpi_communicator() { return std::make_unique<MpiCommunicator>(); }

#else

bool mpi_built() { return false; }
std::unique_ptr<Communicator> make_mpi_communicator() {
  throw Error("this gale was built without MPI: install OpenMPI (tools/setup.sh: libopenmpi-dev openmpi-bin) and "
              "configure again, then launch with mpirun -np N");
}

#endif

}  // namespace gale
