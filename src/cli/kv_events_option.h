// --kv-events ENDPOINT, --kv-events-topic (serve, batch): publish the prefix cache's events for KV-aware routers
// (src/kv_events). One helper so that every command reads the flag and wires the publisher alike.
#pragma once
#include <CLI/CLI.hpp>
#include <memory>
#include <string>

#include "engine/engine.h"
#include "kv_events/kv_event_publisher.h"

namespace gale::cli {

struct KvEventsOptions {
  std::string endpoint;  // --kv-events ("" = off)
  std::string topic;     // --kv-events-topic
};

void add_kv_events_options(CLI::App* sub, KvEventsOptions& o);
// Null when no endpoint is given; else a bound publisher whose sink is set in ec (the publisher
// must outlive the engine). Throws gale::Error when it cannot bind, or when ec has no prefix
// cache (--no-prefix-cache: there would be nothing to publish).
std::unique_ptr<KvEventPublisher> start_kv_events(const KvEventsOptions& o, EngineConfig& ec);

}  // namespace gale::cli
