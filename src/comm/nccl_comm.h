// NCCL over device memory: the communicator of tensor parallelism on GPUs (one rank per GPU,
// launched by mpirun as on the CPU). Declared, not written yet: the unique id of
// ncclCommInitRank is made on rank 0 and sent to the others through the MPI communicator's
// broadcast, then the collectives run on the CUDA backend's stream (all_reduce_sum over the
// partial residuals in bf16 or f32 as the backend keeps them). Built only in CUDA builds where
// CMake finds NCCL (GALE_HAVE_NCCL); nothing constructs it yet.
#pragma once
#if defined(GALE_HAVE_CUDA) && defined(GALE_HAVE_NCCL)
#include <memory>

#include "comm/comm.h"

namespace gale {

// bootstrap: the job's MPI communicator (rank and size; rank 0's NCCL id broadcast over it).
// stream: the CUDA stream (cudaStream_t) the collectives are queued on.
std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, int device, void* stream);

}  // namespace gale
#endif
