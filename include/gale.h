/* Gale's C API: load a model, tokenize, generate (many requests at once, streamed).
 *
 * A stable C ABI over libgale.so (SONAME libgale.so.0):
 *   - every object is an opaque handle made by a gale_*_create / gale_model_load call and
 *     released by its gale_*_free function (free(NULL) is a no-op);
 *   - every call that can fail returns a gale_status; on failure gale_last_error() gives one line
 *     of text saying why (thread-local, valid until this thread's next failing call); no C++
 *     exception crosses this interface;
 *   - memory the library returns (token arrays, strings) is owned by the caller and released
 *     with gale_ids_free / gale_string_free; pointers read from a gale_output live as long as it;
 *   - options and sampling parameters are set one by one (key/value or setters), so new ones can
 *     be added without changing any struct layout.
 *
 * A model is thread-safe (calls are serialized). Requests queued with gale_request_submit run
 * concurrently in one continuous batch: each gale_request_next call runs engine steps until its
 * request has new output, advancing all the others too.
 *
 *   gale_model* m;  gale_params* p;  uint64_t id;  gale_output* o;  size_t n;  int done = 0;
 *   if (gale_model_load("models/default", NULL, &m) != GALE_OK) puts(gale_last_error());
 *   gale_params_create(&p);  gale_params_set_max_tokens(p, 32);  gale_params_set_temperature(p, 0);
 *   gale_request_submit_text(m, "def f(x):", p, &id);
 *   while (!done && gale_request_next(m, id, &o) == GALE_OK) {
 *     const char* text = gale_output_text(o, &n);
 *     fwrite(text, 1, n, stdout);
 *     done = gale_output_finished(o);
 *     gale_output_free(o);
 *   }
 *
 * examples/c/generate.c is a complete program.
 */
#ifndef GALE_H
#define GALE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(GALE_BUILDING_LIBRARY)
#define GALE_API __attribute__((visibility("default")))
#else
#define GALE_API
#endif

/* Version of this header; gale_version() gives the library's ("0.1.0"). */
#define GALE_API_VERSION 1

typedef enum gale_status {
  GALE_OK = 0,
  GALE_ERR_INVALID_ARGUMENT = 1, /* a bad value from the caller: NULL pointer, unknown option,
                                    parameter out of range, empty prompt, unknown request */
  GALE_ERR_LOAD = 2,             /* the model folder: missing or corrupt files, unsupported model */
  GALE_ERR_RUNTIME = 3,          /* a failure while running (the engine, the chat template) */
  GALE_ERR_OUT_OF_MEMORY = 4,
  GALE_ERR_INTERNAL = 5          /* anything else (a bug: please report it) */
} gale_status;

typedef struct gale_options gale_options; /* engine arguments for gale_model_load */
typedef struct gale_model gale_model;     /* a loaded model with its engine */
typedef struct gale_params gale_params;   /* one request's generation settings */
typedef struct gale_output gale_output;   /* what a request produced (a delta, or the whole) */

GALE_API const char* gale_version(void);
/* The last failure's text on this thread ("" when none). */
GALE_API const char* gale_last_error(void);
/* A short constant name for a status ("GALE_ERR_LOAD"). */
GALE_API const char* gale_status_name(gale_status s);

/* ---- engine arguments -------------------------------------------------------------------- */
GALE_API gale_status gale_options_create(gale_options** out);
/* Sets one argument by name (the Python LLM's keyword names): device, dtype, threads,
 * gpu_memory_utilization, quantization, quantization_group, quantize_lm_head, keep_16bit,
 * kv_cache_dtype, max_num_seqs, max_num_batched_tokens, kv_cache_memory, enable_prefix_caching,
 * block_size, speculative, num_speculative_tokens, chat_template. Unknown keys and malformed
 * values are GALE_ERR_INVALID_ARGUMENT. */
GALE_API gale_status gale_options_set(gale_options* o, const char* key, const char* value);
GALE_API void gale_options_free(gale_options* o);

/* ---- models ------------------------------------------------------------------------------ */
/* dir: a Hugging Face model folder, or NULL for the bundled default model; options may be NULL. */
GALE_API gale_status gale_model_load(const char* dir, const gale_options* options, gale_model** out);
/* Cancels its requests and frees everything it holds. */
GALE_API void gale_model_free(gale_model* m);
GALE_API int64_t gale_model_vocab_size(const gale_model* m);

/* ---- tokens ------------------------------------------------------------------------------ */
/* text: len bytes of UTF-8. *ids gets a new array of *n ids (free with gale_ids_free). */
GALE_API gale_status gale_tokenize(gale_model* m, const char* text, size_t len, int add_special_tokens,
                                   int32_t** ids, size_t* n);
GALE_API void gale_ids_free(int32_t* ids);
/* *text gets a new NUL-terminated string of *len bytes (len may be NULL; free with gale_string_free). */
GALE_API gale_status gale_detokenize(gale_model* m, const int32_t* ids, size_t n, int skip_special_tokens,
                                     char** text, size_t* len);
GALE_API void gale_string_free(char* s);
/* The model's chat template over messages_json (a JSON array of {"role", "content"}). */
GALE_API gale_status gale_apply_chat_template(gale_model* m, const char* messages_json, int add_generation_prompt,
                                              char** text, size_t* len);

/* ---- generation settings ----------------------------------------------------------------- */
/* Defaults: max_tokens 16; sampling from the model's generation_config.json (greedy unless it
 * says do_sample); a random seed; no stop strings. Values are checked at submit. */
GALE_API gale_status gale_params_create(gale_params** out);
GALE_API void gale_params_free(gale_params* p);
GALE_API gale_status gale_params_set_max_tokens(gale_params* p, int64_t max_tokens);
GALE_API gale_status gale_params_set_temperature(gale_params* p, float temperature); /* 0 = greedy */
GALE_API gale_status gale_params_set_top_p(gale_params* p, float top_p);
GALE_API gale_status gale_params_set_top_k(gale_params* p, int32_t top_k); /* 0 or -1 = off */
GALE_API gale_status gale_params_set_min_p(gale_params* p, float min_p);
GALE_API gale_status gale_params_set_repetition_penalty(gale_params* p, float penalty);
GALE_API gale_status gale_params_set_presence_penalty(gale_params* p, float penalty);
GALE_API gale_status gale_params_set_frequency_penalty(gale_params* p, float penalty);
GALE_API gale_status gale_params_set_seed(gale_params* p, uint64_t seed);
GALE_API gale_status gale_params_set_ignore_eos(gale_params* p, int ignore_eos);
/* Adds a stop string (repeatable): generation ends before it and it is not part of the text. */
GALE_API gale_status gale_params_add_stop(gale_params* p, const char* stop);

/* ---- requests ---------------------------------------------------------------------------- */
/* Queues a request (params may be NULL for the defaults); *id names it in the calls below. */
GALE_API gale_status gale_request_submit(gale_model* m, const int32_t* prompt, size_t n, const gale_params* params,
                                         uint64_t* id);
/* The same with a text prompt, tokenized with the tokenizer's special tokens (BOS). */
GALE_API gale_status gale_request_submit_text(gale_model* m, const char* prompt, const gale_params* params,
                                              uint64_t* id);
/* Poll: runs engine steps until request id has produced something, and gives what it produced
 * since the previous call as a new gale_output (free it). After the output that says finished,
 * the id is forgotten. */
GALE_API gale_status gale_request_next(gale_model* m, uint64_t id, gale_output** out);
/* Stops a request and forgets it (unknown ids are ignored). */
GALE_API gale_status gale_request_cancel(gale_model* m, uint64_t id);

/* Streaming in one call: called with each piece of new text and new ids; return non-zero to stop
 * the request (finish reason "abort"). It must not free the model. */
typedef int (*gale_stream_fn)(void* user, const char* text, size_t len, const int32_t* ids, size_t n);
/* Runs one request to its end; cb may be NULL. *result gets the whole output (free it). */
GALE_API gale_status gale_generate(gale_model* m, const int32_t* prompt, size_t n, const gale_params* params,
                                   gale_stream_fn cb, void* user, gale_output** result);

/* ---- outputs ----------------------------------------------------------------------------- */
GALE_API void gale_output_free(gale_output* o);
/* The text (UTF-8, NUL-terminated, *len bytes; len may be NULL) and ids, owned by o. */
GALE_API const char* gale_output_text(const gale_output* o, size_t* len);
GALE_API const int32_t* gale_output_ids(const gale_output* o, size_t* n);
GALE_API int gale_output_finished(const gale_output* o);
/* "stop", "length", "abort" once finished, else "". */
GALE_API const char* gale_output_finish_reason(const gale_output* o);
GALE_API int64_t gale_output_prompt_tokens(const gale_output* o);
GALE_API int64_t gale_output_completion_tokens(const gale_output* o); /* so far */

#ifdef __cplusplus
}
#endif

#endif /* GALE_H */
