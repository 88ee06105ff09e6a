#include "cli/kv_events_option.h"

#include <cstdio>

#include "core/error.h"

namespace gale::cli {

void add_kv_events_options(CLI::App* sub, KvEventsOptions& o) {
  sub->add_option("--kv-events", o.endpoint,
                  "Publish the prefix cache's events (blocks stored / removed / cleared) for KV-aware routers "
                  "(NVIDIA Dynamo, llm-d) on a ZeroMQ PUB socket bound here, in vLLM's format, e.g. "
                  "tcp://127.0.0.1:5557")
      ->type_name("tcp://HOST:PORT");
  sub->add_option("--kv-events-topic", o.topic, "Topic frame of every --kv-events message (default empty)");
}

std::unique_ptr<KvEventPublisher> start_kv_events(const KvEventsOptions& o, EngineConfig& ec) {
  if (o.endpoint.empty()) return nullptr;
  if (!ec.prefix_cache) throw Error("--kv-events needs the prefix cache (it publishes its blocks): drop --no-prefix-cache");
  KvEventPublisherConfig pc;
  pc.endpoint = o.endpoint;
  pc.topic = o.topic;
  auto pub = std::make_unique<KvEventPublisher>(pc);
  ec.kv_event_sink = pub->sink();
  std::fprintf(stderr, "gale: KV events on %s (block size %lld)\n", pub->endpoint().c_str(), (long long)ec.block_size);
  return pub;
}

}  // namespace gale::cli
