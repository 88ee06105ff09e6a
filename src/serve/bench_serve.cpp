#include <utility>  // Boost 1.74's awaitable.hpp uses std::exchange without including it

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "serve/bench_serve.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>

#include "core/error.h"

namespace gale::serve {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using clock = std::chrono::steady_clock;
using ojson = nlohmann::ordered_json;

namespace {

struct Url {
  std::string host, port, prefix;
};

Url parse_url(const std::string& s) {
  const std::string scheme = "http://";
  if (s.rfind(scheme, 0) != 0) throw Error("--base-url must start with http:// (TLS is not supported): " + s);
  std::string rest = s.substr(scheme.size());
  size_t slash = rest.find('/');
  std::string hostport = rest.substr(0, slash);
  Url u;
  u.prefix = slash == std::string::npos ? "" : rest.substr(slash);
  while (!u.prefix.empty() && u.prefix.back() == '/') u.prefix.pop_back();
  if (u.prefix.size() >= 3 && u.prefix.substr(u.prefix.size() - 3) == "/v1") u.prefix.resize(u.prefix.size() - 3);
  size_t colon = hostport.rfind(':');
  u.host = colon == std::string::npos ? hostport : hostport.substr(0, colon);
  u.port = colon == std::string::npos ? "80" : hostport.substr(colon + 1);
  if (u.host.empty()) throw Error("--base-url has no host: " + s);
  return u;
}

struct Prompt {
  ojson content;       // string (completions) or messages (chat)
  int output_len = 0;
};

struct Result {
  bool ok = false;
  std::string error;
  double start_s = 0, ttft_ms = 0, e2e_ms = 0;
  std::vector<double> itl_ms;
  int64_t prompt_tokens = 0, output_tokens = 0;
};

// Words that are one or two tokens in most vocabularies: synthetic prompts of ~len tokens.
const char* kWords[] = {"the", "data", "value", "return", "list", "model", "time", "file", "user", "error", "index",
                        "string", "number", "result", "class", "function", "import", "print", "self", "table",
                        "server", "request", "token", "cache", "block", "layer", "query", "state", "config", "path"};

std::vector<Prompt> make_prompts(const BenchServeConfig& c) {
  std::mt19937_64 rng(c.seed);
  std::vector<Prompt> out;
  auto pick_len = [&](int len) {
    if (c.range_ratio <= 0) return std::max(1, len);
    std::uniform_int_distribution<int> d(std::max(1, int(len * (1 - c.range_ratio))), std::max(1, int(len * (1 + c.range_ratio))));
    return d(rng);
  };
  const bool chat = c.endpoint == "chat";
  if (!c.dataset.empty()) {
    std::ifstream f(c.dataset);
    if (!f) throw Error("cannot read the dataset " + c.dataset);
    std::string line;
    int n = 0;
    while (std::getline(f, line) && int(out.size()) < c.num_prompts) {
      ++n;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      ojson j = ojson::parse(line, nullptr, false);
      if (!j.is_object()) throw Error(c.dataset + ":" + std::to_string(n) + ": not a JSON object");
      Prompt p;
      if (j.contains("messages")) {
        p.content = chat ? j["messages"] : ojson(j["messages"].dump());
      } else if (j.contains("prompt") && j["prompt"].is_string()) {
        p.content = chat ? ojson::array({{{"role", "user"}, {"content", j["prompt"]}}}) : j["prompt"];
      } else {
        throw Error(c.dataset + ":" + std::to_string(n) + ": needs \"prompt\" (a string) or \"messages\"");
      }
      p.output_len = j.contains("output_len") && j["output_len"].is_number_integer() ? j["output_len"].get<int>() : pick_len(c.output_len);
      out.push_back(std::move(p));
    }
    if (out.empty()) throw Error("the dataset " + c.dataset + " has no prompts");
    while (int(out.size()) < c.num_prompts) out.push_back(out[out.size() % out.size()]);  // cycle
    return out;
  }
  std::uniform_int_distribution<size_t> w(0, std::size(kWords) - 1);
  for (int i = 0; i < c.num_prompts; ++i) {
    Prompt p;
    const int len = pick_len(c.input_len);
    std::string text;
    for (int k = 0; k < len; ++k) text += (k ? " " : "") + std::string(kWords[w(rng)]);
    p.content = chat ? ojson::array({{{"role", "user"}, {"content", text}}}) : ojson(text);
    p.output_len = pick_len(c.output_len);
    out.push_back(std::move(p));
  }
  return out;
}

// One HTTP exchange on a fresh connection; for streams, on_data sees the body as it grows.
struct HttpClient {
  const Url& url;
  const std::string& api_key;
  double timeout_s;

  template <class OnData>
  int exchange(http::verb verb, const std::string& path, const std::string& body, OnData on_data, std::string& full) {
    net::io_context ioc;
    tcp::resolver resolver(ioc);
    beast::tcp_stream stream(ioc);
    stream.expires_after(std::chrono::milliseconds(int64_t(timeout_s * 1000)));
    stream.connect(resolver.resolve(url.host, url.port));
    http::request<http::string_body> req{verb, url.prefix + path, 11};
    req.set(http::field::host, url.host);
    req.set(http::field::user_agent, "gale-bench-serve");
    if (!api_key.empty()) req.set(http::field::authorization, "Bearer " + api_key);
    if (verb == http::verb::post) {
      req.set(http::field::content_type, "application/json");
      req.body() = body;
      req.prepare_payload();
    }
    http::write(stream, req);
    beast::flat_buffer buf;
    http::response_parser<http::string_body> p;
    p.body_limit(std::numeric_limits<std::uint64_t>::max());
    http::read_header(stream, buf, p);
    size_t seen = 0;
    while (!p.is_done()) {
      http::read_some(stream, buf, p);
      const std::string& b = p.get().body();
      if (b.size() > seen) {
        on_data(b, seen);
      }
    }
    full = p.get().body();
    beast::error_code ec;
    stream.socket().shutdown(tcp::socket::shutdown_both, ec);
    return int(p.get().result_int());
  }
};

double pct(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  double pos = q * double(v.size() - 1);
  size_t lo = size_t(pos);
  size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - double(lo));
}

Percentiles summarize(const std::vector<double>& v) {
  Percentiles p;
  if (v.empty()) return p;
  double s = 0;
  for (double x : v) s += x;
  p.mean = s / double(v.size());
  p.p50 = pct(v, 0.5);
  p.p90 = pct(v, 0.9);
  p.p99 = pct(v, 0.99);
  return p;
}

Result run_one(const Url& url, const BenchServeConfig& c, const std::string& model, const Prompt& pr, clock::time_point t0) {
  Result r;
  const auto start = clock::now();
  r.start_s = std::chrono::duration<double>(start - t0).count();
  const bool chat = c.endpoint == "chat";
  ojson body = {{"model", model}};
  body[chat ? "messages" : "prompt"] = pr.content;
  body[chat ? "max_completion_tokens" : "max_tokens"] = pr.output_len;
  body["temperature"] = 0;
  body["stream"] = true;
  body["stream_options"] = {{"include_usage", true}};
  if (c.ignore_eos) body["ignore_eos"] = true;
  HttpClient client{url, c.api_key, c.timeout_s};
  clock::time_point last;
  bool got_first = false, done = false;
  size_t parsed = 0;
  int64_t chunks = 0;
  auto on_data = [&](const std::string& b, size_t& seen) {
    seen = b.size();
    const auto now = clock::now();
    size_t e;
    while ((e = b.find("\n\n", parsed)) != std::string::npos) {
      std::string ev = b.substr(parsed, e - parsed);
      parsed = e + 2;
      if (ev.rfind("data: ", 0) != 0) continue;
      std::string data = ev.substr(6);
      if (data == "[DONE]") {
        done = true;
        continue;
      }
      ojson j = ojson::parse(data, nullptr, false);
      if (!j.is_object()) continue;
      if (j.contains("error")) {
        r.error = j["error"].value("message", "error event");
        continue;
      }
      if (j.contains("usage") && j["usage"].is_object()) {
        r.prompt_tokens = j["usage"].value("prompt_tokens", int64_t(0));
        r.output_tokens = j["usage"].value("completion_tokens", int64_t(0));
      }
      if (!j.contains("choices") || j["choices"].empty()) continue;
      auto& ch = j["choices"][0];
      std::string piece;
      if (chat && ch.contains("delta") && ch["delta"].contains("content") && ch["delta"]["content"].is_string())
        piece = ch["delta"]["content"].get<std::string>();
      else if (!chat && ch.contains("text") && ch["text"].is_string())
        piece = ch["text"].get<std::string>();
      if (piece.empty()) continue;
      ++chunks;
      if (!got_first) {
        got_first = true;
        r.ttft_ms = std::chrono::duration<double, std::milli>(now - start).count();
      } else {
        r.itl_ms.push_back(std::chrono::duration<double, std::milli>(now - last).count());
      }
      last = now;
    }
  };
  try {
    std::string full;
    int status = client.exchange(http::verb::post, chat ? "/v1/chat/completions" : "/v1/completions", body.dump(), on_data, full);
    if (status != 200) {
      r.error = "HTTP " + std::to_string(status) + ": " + full.substr(0, 200);
      return r;
    }
  } catch (const std::exception& e) {
    r.error = e.what();
    return r;
  }
  r.e2e_ms = std::chrono::duration<double, std::milli>(clock::now() - start).count();
  if (r.output_tokens == 0) r.output_tokens = chunks;
  r.ok = r.error.empty() && done && got_first;
  if (!r.ok && r.error.empty()) r.error = done ? "no tokens" : "stream ended without [DONE]";
  return r;
}

std::string find_model(const Url& url, const BenchServeConfig& c) {
  HttpClient client{url, c.api_key, 30};
  std::string full;
  int status = client.exchange(http::verb::get, "/v1/models", "", [](const std::string&, size_t& seen) { seen = 0; }, full);
  ojson j = ojson::parse(full, nullptr, false);
  if (status != 200 || !j.is_object() || !j.contains("data") || j["data"].empty())
    throw Error("GET /v1/models answered " + std::to_string(status) + ": " + full.substr(0, 200));
  return j["data"][0]["id"].get<std::string>();
}

BenchRun run_at_rate(const Url& url, const BenchServeConfig& c, const std::string& model,
                     const std::vector<Prompt>& prompts, double rate) {
  std::mt19937_64 rng(c.seed + 1);
  std::exponential_distribution<double> gap(std::isinf(rate) ? 1.0 : rate);
  std::vector<Result> results(prompts.size());
  std::mutex mu;
  std::condition_variable cv;
  int active = 0;
  std::vector<std::thread> threads;
  const auto t0 = clock::now();
  double next = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (!std::isinf(rate)) {
      std::this_thread::sleep_until(t0 + std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(next)));
      next += gap(rng);
    }
    {
      std::unique_lock lk(mu);
      if (c.max_concurrency > 0) cv.wait(lk, [&] { return active < c.max_concurrency; });
      ++active;
    }
    threads.emplace_back([&, i] {
      results[i] = run_one(url, c, model, prompts[i], t0);
      std::lock_guard lk(mu);
      --active;
      cv.notify_all();
    });
  }
  for (auto& t : threads) t.join();
  BenchRun run;
  run.model = model;
  run.rate = rate;
  run.max_concurrency = c.max_concurrency;
  run.duration_s = std::chrono::duration<double>(clock::now() - t0).count();
  std::vector<double> ttft, tpot, itl, e2e;
  for (auto& r : results) {
    if (!r.ok) {
      ++run.failed;
      if (run.first_error.empty()) run.first_error = r.error;
      continue;
    }
    ++run.completed;
    run.input_tokens += r.prompt_tokens;
    run.output_tokens += r.output_tokens;
    ttft.push_back(r.ttft_ms);
    e2e.push_back(r.e2e_ms);
    if (r.output_tokens > 1) tpot.push_back((r.e2e_ms - r.ttft_ms) / double(r.output_tokens - 1));
    itl.insert(itl.end(), r.itl_ms.begin(), r.itl_ms.end());
    run.ttft_timeline.push_back({r.start_s, r.ttft_ms});
  }
  run.request_throughput = double(run.completed) / run.duration_s;
  run.output_throughput = double(run.output_tokens) / run.duration_s;
  run.total_token_throughput = double(run.input_tokens + run.output_tokens) / run.duration_s;
  run.ttft_ms = summarize(ttft);
  run.tpot_ms = summarize(tpot);
  run.itl_ms = summarize(itl);
  run.e2e_ms = summarize(e2e);
  return run;
}

std::string rate_text(double r) {
  if (std::isinf(r)) return "inf";
  char b[32];
  std::snprintf(b, sizeof b, "%g", r);
  return b;
}

ojson pjson(const Percentiles& p) { return {{"mean", p.mean}, {"p50", p.p50}, {"p90", p.p90}, {"p99", p.p99}}; }

// ---- inline SVG line charts

struct Series {
  std::string name, color;
  std::vector<std::pair<double, double>> pts;
};


std::string fmt(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.4g", v);
  return b;
}

std::string svg_chart(const std::string& title, const std::string& xlabel, const std::string& ylabel,
                      const std::vector<Series>& series, bool lines = true) {
  const double W = 560, H = 340, L = 70, R = 150, T = 36, B = 50;
  double xmin = 1e300, xmax = -1e300, ymax = 0;
  for (auto& s : series)
    for (auto [x, y] : s.pts) {
      xmin = std::min(xmin, x);
      xmax = std::max(xmax, x);
      ymax = std::max(ymax, y);
    }
  if (xmin > xmax) xmin = 0, xmax = 1;
  if (xmax - xmin < 1e-9) xmin -= 0.5, xmax += 0.5;
  if (xmin > 0 && xmin < 0.3 * xmax) xmin = 0;
  if (ymax <= 0) ymax = 1;
  ymax *= 1.1;
  auto X = [&](double x) { return L + (x - xmin) / (xmax - xmin) * (W - L - R); };
  auto Y = [&](double y) { return H - B - y / ymax * (H - T - B); };
  std::string o = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + fmt(W) + "\" height=\"" + fmt(H) +
                  "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  o += "<text x=\"" + fmt(W / 2 - R / 2) + "\" y=\"20\" text-anchor=\"middle\" font-size=\"14\" font-weight=\"bold\">" + html_escape(title) + "</text>\n";
  for (int i = 0; i <= 5; ++i) {
    double yv = ymax * i / 5, xv = xmin + (xmax - xmin) * i / 5;
    o += "<line x1=\"" + fmt(L) + "\" x2=\"" + fmt(W - R) + "\" y1=\"" + fmt(Y(yv)) + "\" y2=\"" + fmt(Y(yv)) + "\" stroke=\"#ddd\"/>\n";
    o += "<text x=\"" + fmt(L - 6) + "\" y=\"" + fmt(Y(yv) + 4) + "\" text-anchor=\"end\">" + fmt(yv) + "</text>\n";
    o += "<text x=\"" + fmt(X(xv)) + "\" y=\"" + fmt(H - B + 16) + "\" text-anchor=\"middle\">" + fmt(xv) + "</text>\n";
  }
  o += "<line x1=\"" + fmt(L) + "\" x2=\"" + fmt(W - R) + "\" y1=\"" + fmt(H - B) + "\" y2=\"" + fmt(H - B) + "\" stroke=\"#333\"/>\n";
  o += "<line x1=\"" + fmt(L) + "\" x2=\"" + fmt(L) + "\" y1=\"" + fmt(T) + "\" y2=\"" + fmt(H - B) + "\" stroke=\"#333\"/>\n";
  o += "<text x=\"" + fmt((L + W - R) / 2) + "\" y=\"" + fmt(H - 12) + "\" text-anchor=\"middle\">" + html_escape(xlabel) + "</text>\n";
  o += "<text transform=\"translate(16," + fmt((T + H - B) / 2) + ") rotate(-90)\" text-anchor=\"middle\">" + html_escape(ylabel) + "</text>\n";
  int k = 0;
  for (auto& s : series) {
    auto pts = s.pts;
    std::sort(pts.begin(), pts.end());
    if (lines && pts.size() > 1) {
      std::string d;
      for (auto [x, y] : pts) d += (d.empty() ? "M" : " L") + fmt(X(x)) + "," + fmt(Y(y));
      o += "<path d=\"" + d + "\" fill=\"none\" stroke=\"" + s.color + "\" stroke-width=\"2\"/>\n";
    }
    for (auto [x, y] : pts)
      o += "<circle cx=\"" + fmt(X(x)) + "\" cy=\"" + fmt(Y(y)) + "\" r=\"" + (lines ? "3.5" : "2") + "\" fill=\"" + s.color +
           "\"><title>" + html_escape(s.name) + ": " + fmt(x) + ", " + fmt(y) + "</title></circle>\n";
    double ly = T + 10 + 18 * k++;
    o += "<rect x=\"" + fmt(W - R + 12) + "\" y=\"" + fmt(ly - 9) + "\" width=\"12\" height=\"12\" fill=\"" + s.color + "\"/>";
    o += "<text x=\"" + fmt(W - R + 30) + "\" y=\"" + fmt(ly + 1) + "\">" + html_escape(s.name) + "</text>\n";
  }
  return o + "</svg>\n";
}

}  // namespace

std::vector<BenchRun> run_bench_serve(const BenchServeConfig& c) {
  if (c.endpoint != "completions" && c.endpoint != "chat") throw Error("--endpoint must be completions or chat");
  if (c.num_prompts <= 0) throw Error("--num-prompts must be positive");
  const Url url = parse_url(c.base_url);
  std::string model = c.model;
  try {
    if (model.empty()) model = find_model(url, c);
  } catch (const std::exception& e) {
    throw Error("cannot reach " + c.base_url + ": " + e.what());
  }
  const auto prompts = make_prompts(c);
  std::vector<BenchRun> runs;
  for (double rate : c.rates) {
    std::fprintf(stderr, "bench serve: %d requests to %s%s (%s) at rate %s%s\n", c.num_prompts, c.base_url.c_str(),
                 c.endpoint == "chat" ? "/v1/chat/completions" : "/v1/completions", model.c_str(), rate_text(rate).c_str(),
                 c.max_concurrency > 0 ? (", concurrency " + std::to_string(c.max_concurrency)).c_str() : "");
    runs.push_back(run_at_rate(url, c, model, prompts, rate));
    if (runs.back().failed > 0)
      std::fprintf(stderr, "bench serve: %d requests failed; first error: %s\n", runs.back().failed, runs.back().first_error.c_str());
  }
  return runs;
}

void print_bench_table(const std::vector<BenchRun>& runs) {
  std::printf("%-6s %5s %5s %5s %8s %7s %9s | %-22s | %-22s | %-22s | %-16s\n", "rate", "conc", "ok", "fail", "time_s",
              "req/s", "out_tok/s", "TTFT ms p50/p90/p99", "TPOT ms p50/p90/p99", "ITL ms p50/p90/p99", "E2E ms p50/p99");
  for (auto& r : runs) {
    char ttft[64], tpot[64], itl[64], e2e[64];
    std::snprintf(ttft, sizeof ttft, "%.1f/%.1f/%.1f", r.ttft_ms.p50, r.ttft_ms.p90, r.ttft_ms.p99);
    std::snprintf(tpot, sizeof tpot, "%.1f/%.1f/%.1f", r.tpot_ms.p50, r.tpot_ms.p90, r.tpot_ms.p99);
    std::snprintf(itl, sizeof itl, "%.1f/%.1f/%.1f", r.itl_ms.p50, r.itl_ms.p90, r.itl_ms.p99);
    std::snprintf(e2e, sizeof e2e, "%.0f/%.0f", r.e2e_ms.p50, r.e2e_ms.p99);
    std::printf("%-6s %5s %5d %5d %8.2f %7.2f %9.1f | %-22s | %-22s | %-22s | %-16s\n", rate_text(r.rate).c_str(),
                r.max_concurrency > 0 ? std::to_string(r.max_concurrency).c_str() : "-", r.completed, r.failed,
                r.duration_s, r.request_throughput, r.output_throughput, ttft, tpot, itl, e2e);
  }
}

ojson bench_json(const BenchServeConfig& c, const std::vector<BenchRun>& runs) {
  ojson rs = ojson::array();
  for (auto& r : runs) {
    rs.push_back({{"request_rate", std::isinf(r.rate) ? ojson("inf") : ojson(r.rate)},
                  {"max_concurrency", r.max_concurrency},
                  {"completed", r.completed},
                  {"failed", r.failed},
                  {"first_error", r.first_error},
                  {"duration_s", r.duration_s},
                  {"input_tokens", r.input_tokens},
                  {"output_tokens", r.output_tokens},
                  {"request_throughput", r.request_throughput},
                  {"output_throughput", r.output_throughput},
                  {"total_token_throughput", r.total_token_throughput},
                  {"ttft_ms", pjson(r.ttft_ms)},
                  {"tpot_ms", pjson(r.tpot_ms)},
                  {"itl_ms", pjson(r.itl_ms)},
                  {"e2e_ms", pjson(r.e2e_ms)}});
  }
  return {{"base_url", c.base_url}, {"endpoint", c.endpoint}, {"model", runs.empty() ? c.model : runs[0].model}, {"num_prompts", c.num_prompts},
          {"input_len", c.dataset.empty() ? ojson(c.input_len) : ojson(nullptr)},
          {"output_len", c.output_len}, {"range_ratio", c.range_ratio}, {"dataset", c.dataset}, {"seed", c.seed},
          {"runs", rs}};
}

std::string bench_html(const BenchServeConfig& c, const std::vector<BenchRun>& runs) {
  auto vs_rate = [&](const char* name, const char* color, auto get) {
    Series s{name, color, {}};
    for (auto& r : runs) s.pts.push_back({r.request_throughput, get(r)});
    return s;
  };
  std::string h = "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>gale bench serve</title>\n"
                  "<style>body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:collapse;font-size:13px}"
                  "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}"
                  ".plots{display:flex;flex-wrap:wrap;gap:12px}</style></head><body>\n";
  h += "<h1>gale bench serve</h1>\n<p>" + html_escape(c.base_url) + " &middot; model " + html_escape(runs.empty() ? c.model : runs[0].model) + " &middot; endpoint " + html_escape(c.endpoint) + " &middot; " +
       std::to_string(c.num_prompts) + " requests per run &middot; " +
       (c.dataset.empty() ? "synthetic prompts of ~" + std::to_string(c.input_len) + " tokens" : "dataset " + html_escape(c.dataset)) +
       ", " + std::to_string(c.output_len) + " output tokens" +
       (c.range_ratio > 0 ? " (&plusmn;" + fmt(c.range_ratio * 100) + "%)" : "") + "</p>\n";
  h += "<table><tr><th>rate (req/s)</th><th>concurrency</th><th>ok</th><th>failed</th><th>time (s)</th><th>req/s</th>"
       "<th>output tok/s</th><th>TTFT p50/p90/p99 (ms)</th><th>TPOT p50/p90/p99 (ms)</th><th>ITL p50/p90/p99 (ms)</th>"
       "<th>E2E p50/p99 (ms)</th></tr>\n";
  for (auto& r : runs) {
    auto three = [](const Percentiles& p) { return fmt(p.p50) + " / " + fmt(p.p90) + " / " + fmt(p.p99); };
    h += "<tr><td>" + rate_text(r.rate) + "</td><td>" + (r.max_concurrency ? std::to_string(r.max_concurrency) : "-") +
         "</td><td>" + std::to_string(r.completed) + "</td><td>" + std::to_string(r.failed) + "</td><td>" + fmt(r.duration_s) +
         "</td><td>" + fmt(r.request_throughput) + "</td><td>" + fmt(r.output_throughput) + "</td><td>" + three(r.ttft_ms) +
         "</td><td>" + three(r.tpot_ms) + "</td><td>" + three(r.itl_ms) + "</td><td>" + fmt(r.e2e_ms.p50) + " / " +
         fmt(r.e2e_ms.p99) + "</td></tr>\n";
  }
  h += "</table>\n<div class=\"plots\">\n";
  const char* x = "achieved request rate (req/s)";
  h += svg_chart("TTFT vs request rate", x, "ms",
                 {vs_rate("p50", "#1f77b4", [](auto& r) { return r.ttft_ms.p50; }),
                  vs_rate("p90", "#ff7f0e", [](auto& r) { return r.ttft_ms.p90; }),
                  vs_rate("p99", "#d62728", [](auto& r) { return r.ttft_ms.p99; })});
  h += svg_chart("TPOT vs request rate", x, "ms",
                 {vs_rate("p50", "#1f77b4", [](auto& r) { return r.tpot_ms.p50; }),
                  vs_rate("p90", "#ff7f0e", [](auto& r) { return r.tpot_ms.p90; }),
                  vs_rate("p99", "#d62728", [](auto& r) { return r.tpot_ms.p99; })});
  h += svg_chart("End-to-end latency vs request rate", x, "ms",
                 {vs_rate("p50", "#1f77b4", [](auto& r) { return r.e2e_ms.p50; }),
                  vs_rate("p99", "#d62728", [](auto& r) { return r.e2e_ms.p99; })});
  h += svg_chart("Output throughput vs request rate", x, "tokens/s",
                 {vs_rate("output tok/s", "#2ca02c", [](auto& r) { return r.output_throughput; })});
  std::vector<Series> tl;
  const char* colors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"};
  for (size_t i = 0; i < runs.size() && i < 6; ++i) tl.push_back({"rate " + rate_text(runs[i].rate), colors[i], runs[i].ttft_timeline});
  h += svg_chart("TTFT of each request over the run", "request start (s)", "TTFT (ms)", tl, /*lines=*/false);
  return h + "</div>\n</body></html>\n";
}

std::string html_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else if (c == '&') o += "&amp;";
    else if (c == '"') o += "&quot;";
    else o += c;
  }
  return o;
}

}  // namespace gale::serve
