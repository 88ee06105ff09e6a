#include "kv_events/kv_event_encoder.h"

#include "kv_events/msgpack_writer.h"

namespace gale {

namespace {

const char* medium_name(KvCacheMedium m) { return m == KvCacheMedium::Host ? "CPU" : "GPU"; }

void write_hashes(MsgpackWriter& w, const std::vector<uint64_t>& hashes) {
  w.array(uint32_t(hashes.size()));
  for (uint64_t h : hashes) w.sint(int64_t(h));  // the same 64 bits, read as two's complement
}

void write_event(MsgpackWriter& w, const KvCacheEvent& e) {
  switch (e.kind) {
    case KvCacheEvent::Kind::Stored:
      w.array(7);
      w.str("BlockStored");
      write_hashes(w, e.block_hashes);
      if (e.parent_hash) w.sint(int64_t(*e.parent_hash));
      else w.nil();
      w.array(uint32_t(e.token_ids.size()));
      for (int32_t t : e.token_ids) w.sint(t);
      w.sint(e.block_size);
      w.nil();  // lora_id
      w.str(medium_name(e.medium));
      break;
    case KvCacheEvent::Kind::Removed:
      w.array(3);
      w.str("BlockRemoved");
      write_hashes(w, e.block_hashes);
      w.str(medium_name(e.medium));
      break;
    case KvCacheEvent::Kind::Cleared:
      w.array(1);
      w.str("AllBlocksCleared");
      break;
  }
}

}  // namespace

std::string encode_kv_event_batch(double ts, std::span<const KvCacheEvent> events, int64_t data_parallel_rank) {
  MsgpackWriter w;
  w.array(3);
  w.f64(ts);
  w.array(uint32_t(events.size()));
  for (const KvCacheEvent& e : events) write_event(w, e);
  w.sint(data_parallel_rank);
  return w.take();
}

}  // namespace gale
