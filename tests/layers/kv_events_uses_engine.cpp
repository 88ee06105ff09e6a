// Must not compile: kv_events/ sits on runtime/ (it encodes and sends the prefix cache's events),
// below engine/.
#include "engine/engine.h"

int layer_check_kv_events_uses_engine() { return 0; }
