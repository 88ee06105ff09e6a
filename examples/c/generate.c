/* Streams a completion through Gale's C API (include/gale.h), as C.
 *
 *   generate-c [-m MODEL_DIR] [-n MAX_TOKENS] [-t TEMPERATURE] PROMPT
 *
 * Without -m it loads the bundled default model. Prints the text as it is produced, then the
 * finish reason and token counts on stderr.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gale.h"

static int on_text(void* user, const char* text, size_t len, const int32_t* ids, size_t n) {
  (void)user;
  (void)ids;
  (void)n;
  fwrite(text, 1, len, stdout);
  fflush(stdout);
  return 0; /* non-zero would stop the request */
}

int main(int argc, char** argv) {
  const char* model = NULL;
  const char* prompt = NULL;
  long max_tokens = 64;
  double temperature = 0.0;
  for (int i = 1; i < argc; ++i) {
    if (!strcmp(argv[i], "-m") && i + 1 < argc) model = argv[++i];
    else if (!strcmp(argv[i], "-n") && i + 1 < argc) max_tokens = strtol(argv[++i], NULL, 10);
    else if (!strcmp(argv[i], "-t") && i + 1 < argc) temperature = strtod(argv[++i], NULL);
    else prompt = argv[i];
  }
  if (!prompt) {
    fprintf(stderr, "usage: %s [-m MODEL_DIR] [-n MAX_TOKENS] [-t TEMPERATURE] PROMPT\n", argv[0]);
    return 2;
  }

  gale_model* m = NULL;
  gale_params* p = NULL;
  gale_output* out = NULL;
  int32_t* ids = NULL;
  size_t n_ids = 0;
  int rc = 1;
  gale_status s = gale_model_load(model, NULL, &m);
  if (s == GALE_OK) s = gale_tokenize(m, prompt, strlen(prompt), 1, &ids, &n_ids);
  if (s == GALE_OK) s = gale_params_create(&p);
  if (s == GALE_OK) s = gale_params_set_max_tokens(p, max_tokens);
  if (s == GALE_OK) s = gale_params_set_temperature(p, (float)temperature);
  if (s == GALE_OK) s = gale_generate(m, ids, n_ids, p, on_text, NULL, &out);
  if (s == GALE_OK) {
    fprintf(stderr, "\n[%s: %lld prompt tokens, %lld generated]\n", gale_output_finish_reason(out),
            (long long)gale_output_prompt_tokens(out), (long long)gale_output_completion_tokens(out));
    rc = 0;
  } else {
    fprintf(stderr, "error (%s): %s\n", gale_status_name(s), gale_last_error());
  }
  gale_output_free(out);
  gale_ids_free(ids);
  gale_params_free(p);
  gale_model_free(m);
  return rc;
}
