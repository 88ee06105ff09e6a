// Must not compile: model/ may not use runtime/ (ARCHITECTURE.md, Layers). Built only by the
// ctest Layers.ModelCannotIncludeRuntime, which expects the build to fail.
#include "runtime/sampler.h"
#include "model/transformer.h"
