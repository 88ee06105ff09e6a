// Must not compile: api/ sits on engine/, beside serve/ (the server's protocol is not the
// in-process API's business).
#include "serve/openai_api.h"

int layer_check_api_uses_serve() { return 0; }
