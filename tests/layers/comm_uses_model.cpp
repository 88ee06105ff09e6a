// Must not compile: comm/ sits below model/ (core <- comm <- model; ARCHITECTURE.md, Layers), so
// the communicator never sees a tensor. Built only by the ctest Layers.CommCannotIncludeModel.
#include "comm/comm.h"
#include "model/backend.h"
