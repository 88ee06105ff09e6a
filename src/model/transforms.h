// Transforms: steps over the bound weights between binding and the backend's prepare, the
// third stage of loading (architecture description -> weights bound with their scheme ->
// transforms -> Backend::supports check and prepare). gpt-fast's habit: quantization and
// tensor parallelism are applied to a loaded model, not woven into loading, so each is one
// WeightTransform here and composes with the others:
//   - quantize-at-load: rewrites matrices into a scheme (model/weights.h WeightScheme);
//   - shard-for-TP: narrows cfg to the rank's heads and replaces matrices with rows_view /
//     cols_view views of the mapped checkpoint (pack_rows where the backend needs packed rows);
//   - prune: zeroes or drops weights in copies it owns.
// The loader applies the identity, quantize_fp8_per_channel for --quantization fp8 and
// quantize_int_weights for --quantization int8|int4.
#pragma once
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "loader/model_config.h"
#include "loader/name_patterns.h"
#include "model/int_quantize.h"
#include "model/weights.h"

namespace gale {

struct WeightTransform {
  std::string name;  // for messages
  // May narrow cfg and rewrite w's matrices; data it makes is kept alive in w.owned.
  std::function<void(ModelConfig& cfg, ModelWeights& w)> apply;
};

// Leaves everything as bound.
WeightTransform identity_transform();
// Copies every matrix whose rows are not packed (a column view, a row-parallel shard) into
// rows of its own, for backends whose products read packed rows only (Backend::supports).
// Plain schemes only: a scaled matrix's copy would need its scales re-laid too.
WeightTransform pack_rows();

// --quantization fp8: every projection of the layers (attention, dense MLP, experts) to E4M3
// with one f32 scale per output channel (model/fp8_quantize.h: amax / 448, values rounded to
// nearest even), in buffers the weights own; ModelWeights::total_bytes follows. The MoE router
// stays as stored, and so does the LM head unless `lm_head` (--quantize-lm-head: published FP8
// checkpoints keep it 16-bit for quality, but at batch 1 it is a tenth of an 8B model's bytes
// per token); a matrix already FP8 is left alone, and so is one whose checkpoint name
// `keep_16bit` matches (--keep-16bit; a pattern matching no matrix is an error, most likely a
// typo).
WeightTransform quantize_fp8_per_channel(const NamePatterns& keep_16bit = {}, bool lm_head = false);

// --quantization int8|int4: every 16/32-bit projection of the layers to integer codes by
// model/int_quantize.h's quantize_int (spec: 8 bits per channel symmetric for int8; 4 bits,
// groups of 128, zero points for int4), in model/weights.h's integer layout, in buffers the
// weights own; ModelWeights::total_bytes follows (codes, scales and zero points). As for fp8:
// the MoE routers stay as stored, matrices already quantized (FP8, integer) are left alone,
// and so is one whose checkpoint name `keep_16bit` matches. The LM head stays as stored unless
// `lm_head` (--quantize-lm-head): then it is quantized the same way, into a copy of its own
// when it is tied to the embedding table (which the embedding lookup keeps reading).
WeightTransform quantize_int_weights(const IntQuantSpec& spec, const NamePatterns& keep_16bit = {},
                                     bool lm_head = false);

// Tensor parallelism (--tp N, rank `rank` of `size`): keeps this rank's shard of every layer as
// views of the mapped checkpoint, gpt-fast's tp.py as a transform. Column-parallel (rows of W):
// q, k, v by heads (a rank's q heads, and the KV heads they read: split when num_kv_heads is a
// multiple of size, else one KV head per rank, replicated, when size is a multiple of
// num_kv_heads), gate and up by intermediate columns; row-parallel (columns of W, partial sums
// the backend all-reduces through Backend::reduce_add): o and down, their biases kept on rank 0
// only, so they are added once. The LM head is vocabulary-parallel (rows shard_range(vocab) of
// comm/comm.h; the backend all-gathers the logits, Backend::all_gather_columns); the embedding
// table and the norms stay whole on every rank. cfg's num_heads, num_kv_heads and
// intermediate_size become the rank's own; vocab_size stays the whole vocabulary. Refused, by
// name: MoE models, head or intermediate counts that do not divide, act-order weights. The
// row-parallel views are strided: pack_rows() after it makes them packed rows for the CPU.
WeightTransform shard_tensor_parallel(int rank, int size);

// Pipeline parallelism (--pp N, stage `stage` of `stages`): keeps the layers shard_range(
// num_layers, stage, stages) (comm/comm.h), their windows with them; cfg.num_layers becomes the
// stage's count. The embedding stays for stage 0, the final norm and LM head for the last (views:
// the others never read them). Every stage needs at least one layer.
WeightTransform split_pipeline_layers(int stage, int stages);

// Applies ts in order; an error is rethrown prefixed with the transform's name.
void apply_transforms(std::span<const WeightTransform> ts, ModelConfig& cfg, ModelWeights& w);

}  // namespace gale
