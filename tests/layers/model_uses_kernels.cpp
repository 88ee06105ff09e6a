// Must compile: model/ may use kernels/ and loader/ (the control of model_uses_runtime.cpp).
#include "kernels/cpu/ops.h"
#include "loader/model_config.h"
#include "model/transformer.h"
