/* The C API (include/gale.h) from C: error paths checked here, generated outputs printed for
 * tests/capi/run_capi_test.py to compare with `gale generate --json` (an independent path).
 *
 *   capi_test MODEL_DIR MAX_TOKENS PROMPT...
 *
 * Prints one line per prompt, "RESULT <index> <finish_reason> <ids, comma-separated> <text as hex>",
 * for the prompts run all at once (submitted together, polled in turn), then "OK". Any failed
 * check prints "FAIL: ..." and exits 1.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gale.h"

static int failures = 0;

#define CHECK(cond, ...)                               \
  do {                                                 \
    if (!(cond)) {                                     \
      printf("FAIL: %s:%d: ", __FILE__, __LINE__);     \
      printf(__VA_ARGS__);                             \
      printf("\n");                                    \
      ++failures;                                      \
    }                                                  \
  } while (0)

/* s is the expected status and gale_last_error() names the problem (contains `needle`). */
#define CHECK_ERR(call, expected, needle)                                                                     \
  do {                                                                                                        \
    gale_status s_ = (call);                                                                                  \
    CHECK(s_ == (expected), "%s: got %s, want %s (%s)", #call, gale_status_name(s_), #expected,                \
          gale_last_error());                                                                                 \
    CHECK(strstr(gale_last_error(), (needle)) != NULL, "%s: error '%s' lacks '%s'", #call, gale_last_error(), \
          (needle));                                                                                          \
  } while (0)

typedef struct {
  char* text;
  size_t len;
  int32_t* ids;
  size_t n;
  char reason[16];
} result;

static void append(result* r, const char* text, size_t len, const int32_t* ids, size_t n) {
  r->text = realloc(r->text, r->len + len + 1);
  memcpy(r->text + r->len, text, len);
  r->len += len;
  r->text[r->len] = '\0';
  r->ids = realloc(r->ids, (r->n + n + 1) * sizeof(int32_t));
  if (n) memcpy(r->ids + r->n, ids, n * sizeof(int32_t));
  r->n += n;
}

static void print_result(int index, const result* r) {
  printf("RESULT %d %s ", index, r->reason);
  for (size_t i = 0; i < r->n; ++i) printf("%s%d", i ? "," : "", r->ids[i]);
  if (r->n == 0) printf("-");
  printf(" ");
  for (size_t i = 0; i < r->len; ++i) printf("%02x", (unsigned char)r->text[i]);
  if (r->len == 0) printf("-");
  printf("\n");
}

typedef struct {
  result r;
  int calls, stop_after;
} stream_state;

static int on_piece(void* user, const char* text, size_t len, const int32_t* ids, size_t n) {
  stream_state* st = user;
  append(&st->r, text, len, ids, n);
  return ++st->calls == st->stop_after;
}

static void errors_without_model(void) {
  gale_model* m = (gale_model*)0x1;
  CHECK_ERR(gale_model_load("/nonexistent/gale-model", NULL, &m), GALE_ERR_LOAD, "/nonexistent/gale-model");
  CHECK(m == NULL, "a failed load leaves *out NULL");
  CHECK_ERR(gale_model_load("", NULL, &m), GALE_ERR_INVALID_ARGUMENT, "empty");
  CHECK_ERR(gale_model_load(NULL, NULL, NULL), GALE_ERR_INVALID_ARGUMENT, "NULL");

  gale_options* o = NULL;
  CHECK(gale_options_create(&o) == GALE_OK, "options");
  CHECK_ERR(gale_options_set(o, "no_such_option", "1"), GALE_ERR_INVALID_ARGUMENT, "no_such_option");
  CHECK_ERR(gale_options_set(o, "max_num_seqs", "0"), GALE_ERR_INVALID_ARGUMENT, "max_num_seqs");
  CHECK_ERR(gale_options_set(o, "max_num_seqs", "eight"), GALE_ERR_INVALID_ARGUMENT, "integer");
  CHECK_ERR(gale_options_set(o, "kv_cache_memory", "2 lots"), GALE_ERR_INVALID_ARGUMENT, "kv_cache_memory");
  CHECK_ERR(gale_options_set(o, "dtype", "f64"), GALE_ERR_INVALID_ARGUMENT, "dtype");
  CHECK_ERR(gale_options_set(o, NULL, "1"), GALE_ERR_INVALID_ARGUMENT, "NULL");
  CHECK(gale_options_set(o, "device", "no-such-device") == GALE_OK, "device is checked at load");
  CHECK(gale_model_load(NULL, o, &m) != GALE_OK && m == NULL, "a bad device fails the load");
  CHECK(strlen(gale_last_error()) > 0, "a bad device says why");
  gale_options_free(o);
  gale_options_free(NULL);
  gale_model_free(NULL);
  gale_params_free(NULL);
  gale_output_free(NULL);
}

static void errors_with_model(gale_model* m) {
  gale_params* p = NULL;
  uint64_t id = 0;
  int32_t prompt[3] = {1, 2, 3};
  gale_output* out = NULL;
  CHECK(gale_params_create(&p) == GALE_OK, "params");
  CHECK_ERR(gale_request_submit(m, prompt, 0, p, &id), GALE_ERR_INVALID_ARGUMENT, "empty");
  int32_t big[1] = {(int32_t)gale_model_vocab_size(m) + 5};
  CHECK_ERR(gale_request_submit(m, big, 1, p, &id), GALE_ERR_INVALID_ARGUMENT, "");
  int32_t neg[1] = {-1};
  CHECK_ERR(gale_request_submit(m, neg, 1, p, &id), GALE_ERR_INVALID_ARGUMENT, "");
  gale_params_set_temperature(p, -1.0f);
  CHECK_ERR(gale_request_submit(m, prompt, 3, p, &id), GALE_ERR_INVALID_ARGUMENT, "temperature");
  gale_params_set_temperature(p, 0.0f);
  gale_params_set_top_p(p, 1.5f);
  CHECK_ERR(gale_request_submit(m, prompt, 3, p, &id), GALE_ERR_INVALID_ARGUMENT, "top_p");
  gale_params_set_top_p(p, 1.0f);
  gale_params_set_max_tokens(p, -1);
  CHECK_ERR(gale_request_submit(m, prompt, 3, p, &id), GALE_ERR_INVALID_ARGUMENT, "max_tokens");
  gale_params_set_max_tokens(p, 1000000000);
  CHECK_ERR(gale_request_submit(m, prompt, 3, p, &id), GALE_ERR_INVALID_ARGUMENT, "");
  CHECK_ERR(gale_params_add_stop(p, ""), GALE_ERR_INVALID_ARGUMENT, "empty");
  CHECK_ERR(gale_request_next(m, 987654321, &out), GALE_ERR_INVALID_ARGUMENT, "987654321");
  CHECK(out == NULL, "a failed next leaves *out NULL");
  CHECK(gale_request_cancel(m, 987654321) == GALE_OK, "cancelling an unknown id is a no-op");
  char* text = NULL;
  CHECK_ERR(gale_detokenize(m, neg, 1, 0, &text, NULL), GALE_ERR_INVALID_ARGUMENT, "");
  CHECK_ERR(gale_tokenize(m, NULL, 3, 1, NULL, NULL), GALE_ERR_INVALID_ARGUMENT, "NULL");
  /* the bundled model has no chat template */
  CHECK_ERR(gale_apply_chat_template(m, "[{\"role\": \"user\", \"content\": \"hi\"}]", 1, &text, NULL),
            GALE_ERR_INVALID_ARGUMENT, "chat template");
  CHECK_ERR(gale_apply_chat_template(m, "[{\"role\": ", 1, &text, NULL), GALE_ERR_INVALID_ARGUMENT, "JSON");
  gale_params_free(p);
}

int main(int argc, char** argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s MODEL_DIR MAX_TOKENS PROMPT...\n", argv[0]);
    return 2;
  }
  const char* dir = argv[1];
  const long max_tokens = strtol(argv[2], NULL, 10);
  const int n_prompts = argc - 3;
  errors_without_model();

  gale_model* m = NULL;
  if (gale_model_load(dir, NULL, &m) != GALE_OK) {
    printf("FAIL: load %s: %s\n", dir, gale_last_error());
    return 1;
  }
  printf("version %s, vocabulary %lld\n", gale_version(), (long long)gale_model_vocab_size(m));
  errors_with_model(m);

  gale_params* p = NULL;
  gale_params_create(&p);
  gale_params_set_max_tokens(p, max_tokens);
  gale_params_set_temperature(p, 0.0f);

  /* Tokenize and detokenize round trip (the bundled tokenizer is byte-level BPE: lossless). */
  int32_t* ids = NULL;
  size_t n = 0;
  CHECK(gale_tokenize(m, argv[3], strlen(argv[3]), 0, &ids, &n) == GALE_OK && n > 0, "tokenize: %s", gale_last_error());
  char* back = NULL;
  size_t back_len = 0;
  CHECK(gale_detokenize(m, ids, n, 0, &back, &back_len) == GALE_OK, "detokenize: %s", gale_last_error());
  CHECK(back && back_len == strlen(argv[3]) && memcmp(back, argv[3], back_len) == 0, "round trip gave '%s'",
        back ? back : "(null)");
  gale_string_free(back);
  gale_ids_free(ids);

  /* Every prompt at once: submitted together, polled in turn until all finish. */
  uint64_t* req = calloc((size_t)n_prompts, sizeof(uint64_t));
  result* res = calloc((size_t)n_prompts, sizeof(result));
  int* done = calloc((size_t)n_prompts, sizeof(int));
  for (int i = 0; i < n_prompts; ++i)
    CHECK(gale_request_submit_text(m, argv[3 + i], p, &req[i]) == GALE_OK, "submit: %s", gale_last_error());
  for (int left = n_prompts; left > 0 && failures == 0;) {
    for (int i = 0; i < n_prompts; ++i) {
      if (done[i]) continue;
      gale_output* o = NULL;
      if (gale_request_next(m, req[i], &o) != GALE_OK) {
        CHECK(0, "next: %s", gale_last_error());
        break;
      }
      size_t len = 0, k = 0;
      const char* t = gale_output_text(o, &len);
      const int32_t* d = gale_output_ids(o, &k);
      append(&res[i], t, len, d, k);
      if (gale_output_finished(o)) {
        snprintf(res[i].reason, sizeof res[i].reason, "%s", gale_output_finish_reason(o));
        CHECK(gale_output_completion_tokens(o) == (int64_t)res[i].n, "completion_tokens %lld, ids %zu",
              (long long)gale_output_completion_tokens(o), res[i].n);
        done[i] = 1;
        --left;
      }
      gale_output_free(o);
    }
  }
  /* A finished request is forgotten. */
  gale_output* gone = NULL;
  CHECK(gale_request_next(m, req[0], &gone) == GALE_ERR_INVALID_ARGUMENT, "next after finished");

  /* The one-call stream of the first prompt: its pieces add up to the batched result. */
  gale_tokenize(m, argv[3], strlen(argv[3]), 1, &ids, &n);
  stream_state st = {{0}, 0, 0};
  gale_output* whole = NULL;
  CHECK(gale_generate(m, ids, n, p, on_piece, &st, &whole) == GALE_OK, "generate: %s", gale_last_error());
  if (whole) {
    size_t len = 0, k = 0;
    const char* t = gale_output_text(whole, &len);
    const int32_t* d = gale_output_ids(whole, &k);
    CHECK(len == st.r.len && (len == 0 || memcmp(t, st.r.text, len) == 0), "streamed text differs from the whole");
    CHECK(k == st.r.n && (k == 0 || memcmp(d, st.r.ids, k * sizeof(int32_t)) == 0), "streamed ids differ");
    CHECK(len == res[0].len && (len == 0 || memcmp(t, res[0].text, len) == 0), "alone differs from batched");
    CHECK(strcmp(gale_output_finish_reason(whole), res[0].reason) == 0, "finish reason %s vs %s",
          gale_output_finish_reason(whole), res[0].reason);
  }
  gale_output_free(whole);

  /* A callback that returns non-zero stops its request. */
  stream_state stop = {{0}, 0, 2};
  whole = NULL;
  CHECK(gale_generate(m, ids, n, p, on_piece, &stop, &whole) == GALE_OK, "generate: %s", gale_last_error());
  if (whole) CHECK(strcmp(gale_output_finish_reason(whole), "abort") == 0, "stopped: %s", gale_output_finish_reason(whole));
  CHECK(stop.calls == 2, "callback calls after stop: %d", stop.calls);
  gale_output_free(whole);
  free(stop.r.text);
  free(stop.r.ids);

  /* A stop string taken from the middle of the greedy text ends it there. */
  if (res[0].len > 8) {
    char needle[5];
    memcpy(needle, res[0].text + res[0].len / 2, 4);
    needle[4] = '\0';
    if (strlen(needle) == 4) {
      gale_params* ps = NULL;
      gale_params_create(&ps);
      gale_params_set_max_tokens(ps, max_tokens);
      gale_params_set_temperature(ps, 0.0f);
      gale_params_add_stop(ps, needle);
      whole = NULL;
      CHECK(gale_generate(m, ids, n, ps, NULL, NULL, &whole) == GALE_OK, "generate: %s", gale_last_error());
      if (whole) {
        size_t len = 0;
        const char* t = gale_output_text(whole, &len);
        const char* first = strstr(res[0].text, needle);
        CHECK(strcmp(gale_output_finish_reason(whole), "stop") == 0, "stop string: %s", gale_output_finish_reason(whole));
        CHECK(first && len == (size_t)(first - res[0].text) && memcmp(t, res[0].text, len) == 0,
              "text before the stop string: '%s'", t);
      }
      gale_output_free(whole);
      gale_params_free(ps);
    }
  }
  gale_ids_free(ids);
  free(st.r.text);
  free(st.r.ids);

  for (int i = 0; i < n_prompts; ++i) {
    print_result(i, &res[i]);
    free(res[i].text);
    free(res[i].ids);
  }
  /* Seeded sampling with every setter, without speculation (its draws depend on the verified
   * lengths): the driver compares the ids with the CLI's flags. */
  {
    gale_options* o = NULL;
    gale_model* plain = NULL;
    gale_params* ps = NULL;
    gale_output* out = NULL;
    gale_options_create(&o);
    gale_options_set(o, "speculative", "off");
    gale_options_set(o, "max_num_seqs", "4");
    CHECK(gale_model_load(dir, o, &plain) == GALE_OK, "load: %s", gale_last_error());
    gale_params_create(&ps);
    gale_params_set_max_tokens(ps, max_tokens);
    gale_params_set_temperature(ps, 0.9f);
    gale_params_set_top_k(ps, 50);
    gale_params_set_top_p(ps, 0.9f);
    gale_params_set_min_p(ps, 0.05f);
    gale_params_set_seed(ps, 1234);
    gale_params_set_presence_penalty(ps, 1.5f);
    gale_params_set_frequency_penalty(ps, 0.5f);
    gale_params_set_repetition_penalty(ps, 1.1f);
    if (plain) {
      gale_tokenize(plain, argv[3], strlen(argv[3]), 1, &ids, &n);
      CHECK(gale_generate(plain, ids, n, ps, NULL, NULL, &out) == GALE_OK, "generate: %s", gale_last_error());
      size_t k = 0;
      const int32_t* d = gale_output_ids(out, &k);
      printf("SAMPLED ");
      for (size_t i = 0; i < k; ++i) printf("%s%d", i ? "," : "", d[i]);
      printf("\n");
      gale_ids_free(ids);
    }
    gale_output_free(out);
    gale_params_free(ps);
    gale_model_free(plain);
    gale_options_free(o);
  }

  /* A request left in flight is freed with the model. */
  uint64_t dangling = 0;
  CHECK(gale_request_submit_text(m, argv[3], p, &dangling) == GALE_OK, "submit: %s", gale_last_error());
  free(req);
  free(res);
  free(done);
  gale_params_free(p);
  gale_model_free(m);
  if (failures) return 1;
  printf("OK\n");
  return 0;
}
