// The prefix cache's events (runtime/kv_cache_event.h) in the wire format of vLLM's KV events,
// which NVIDIA Dynamo's KV router reads from ZeroMQ (its "KV events for custom engines" guide,
// ZMQ relay) and llm-d's KV-cache manager too: one msgpack payload per batch,
//
//   [ts, [event, ...], data_parallel_rank]                       (KVEventBatch, array-like)
//   ["BlockStored", [hash, ...], parent_hash | nil, [token, ...], block_size, lora_id | nil, medium]
//   ["BlockRemoved", [hash, ...], medium]
//   ["AllBlocksCleared"]
//
// vLLM's structs are msgspec array-like tagged structs: each event an array whose first item is
// its type name, then its fields in order. Hashes go out as signed 64-bit integers (Dynamo's
// guide: "block hashes are signed 64-bit integers"); medium is "GPU" for the device pool (vLLM's
// name, whatever the device) and "CPU" for the host tier; lora_id is nil (no adapters).
#pragma once
#include <cstdint>
#include <span>
#include <string>

#include "runtime/kv_cache_event.h"

namespace gale {

// ts: seconds since the Unix epoch (the batch's wall time).
std::string encode_kv_event_batch(double ts, std::span<const KvCacheEvent> events, int64_t data_parallel_rank);

}  // namespace gale
