#!/usr/bin/env bash
# Server end-to-end tests against the real `gale serve` on loopback, with real clients:
#   curl (SSE framing, headers, auth, body limit), the official openai npm package
#   (client_test.mjs), a bounded load test (load_test.mjs), and the SIGTERM drain.
# Usage: tests/e2e/run_e2e.sh BUILD_DIR   (exits non-zero on any failure; always stops the server)
# GALE_E2E_SANITIZED=1: the build has ASan+UBSan (tools/test.sh sets it); the load test then skips
# its resident-memory bound, and LeakSanitizer's verdict at the server's exit counts instead.
set -euo pipefail
build=$(cd "${1:?usage: run_e2e.sh BUILD_DIR}" && pwd)
gale=$build/gale
cd "$(dirname "$0")"
here=$(pwd)

if [ ! -d node_modules/openai ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi

key="e2e-$RANDOM$RANDOM"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
log=$(mktemp)
pid=""
fspid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  if [ -n "$fspid" ] && kill -0 "$fspid" 2>/dev/null; then kill -KILL "$fspid" 2>/dev/null || true; fi
  rm -f "$log" /tmp/gale-e2e-$$.*
}
trap cleanup EXIT
fail() { echo "e2e: FAIL: $*"; echo "--- server log (tail)"; tail -n 30 "$log"; exit 1; }

GALE_API_KEY=$key "$gale" serve --port "$port" --chat-template "$here/chat_template.jinja" --max-num-seqs 64 \
  --drain-timeout 60 >"$log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do
  curl -sf "$url/health" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || fail "server exited at start-up"
  sleep 0.2
done
curl -sf "$url/health" >/dev/null || fail "server did not come up"
echo "e2e: server up on $url (pid $pid)"

# ---- curl: SSE framing
out=/tmp/gale-e2e-$$.sse
hdr=/tmp/gale-e2e-$$.hdr
curl -sN -D "$hdr" "$url/v1/chat/completions" -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
  -d '{"messages":[{"role":"user","content":"def add(a, b):"}],"max_tokens":12,"temperature":0,"stream":true,"stream_options":{"include_usage":true}}' >"$out"
grep -qi '^content-type: text/event-stream' "$hdr" || fail "SSE content type"
grep -qi '^transfer-encoding: chunked' "$hdr" || fail "SSE chunked encoding"
python3 - "$out" <<'PY' || fail "SSE framing"
import json, sys
raw = open(sys.argv[1], "rb").read().decode()
assert raw.endswith("data: [DONE]\n\n"), repr(raw[-40:])
events = raw.split("\n\n")[:-1]
assert all(e.startswith("data: ") and "\n" not in e for e in events), events
chunks = [json.loads(e[6:]) for e in events[:-1]]
assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length")
assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1
assert len({c["id"] for c in chunks}) == 1 and all(c["object"] == "chat.completion.chunk" for c in chunks)
PY
# HTTP/1.0 has no chunked encoding: the stream is close-delimited
curl -sN --http1.0 -D "$hdr" "$url/v1/completions" -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
  -d '{"prompt":"def add(a, b):","max_tokens":6,"temperature":0,"stream":true}' >"$out"
grep -qi '^transfer-encoding' "$hdr" && fail "HTTP/1.0 stream sent Transfer-Encoding"
grep -qi '^connection: close' "$hdr" || fail "HTTP/1.0 stream without Connection: close"
tail -c 14 "$out" | grep -q 'data: \[DONE\]' || fail "HTTP/1.0 stream did not end with [DONE]"
code() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
[ "$(code "$url/health")" = 200 ] || fail "/health without a key"
[ "$(code "$url/v1/models")" = 401 ] || fail "/v1/models without a key"
[ "$(code "$url/metrics")" = 401 ] || fail "/metrics without a key"
[ "$(code -H "Authorization: Bearer $key" "$url/v1/models")" = 200 ] || fail "/v1/models with the key"
head -c $((9 << 20)) /dev/zero | tr '\0' 'a' >/tmp/gale-e2e-$$.big
c=$(code -H "Authorization: Bearer $key" -H 'Content-Type: application/json' --data-binary @/tmp/gale-e2e-$$.big "$url/v1/completions" || true)
[ "$c" = 413 ] || [ "$c" = 000 ] || fail "oversized body answered $c"
[ "$(code -H "Authorization: Bearer $key" -d '{"prompt":' "$url/v1/completions")" = 400 ] || fail "invalid JSON"
echo "e2e: curl checks passed"

# ---- the openai npm client
GALE_URL=$url GALE_API_KEY=$key GALE_BIN=$gale node client_test.mjs || fail "client tests"
# ---- tool calls and reasoning through the openai npm client: the real HTTP server over the
# scripted fake engine with the real Qwen3 template (fake_serve.cpp)
"$build/tests/e2e/fake_serve" >/tmp/gale-e2e-$$.fsport 2>/tmp/gale-e2e-$$.fslog &
fspid=$!
for _ in $(seq 1 100); do [ -s /tmp/gale-e2e-$$.fsport ] && break; sleep 0.1; done
fsport=$(head -n 1 /tmp/gale-e2e-$$.fsport)
[ -n "$fsport" ] || fail "fake_serve did not start: $(cat /tmp/gale-e2e-$$.fslog)"
GALE_URL=http://127.0.0.1:$fsport node tools_client_test.mjs || fail "tools client tests"
kill -TERM "$fspid"
wait "$fspid" || fail "fake_serve exit status after SIGTERM"
fspid=""
# ---- load
GALE_URL=$url GALE_API_KEY=$key node load_test.mjs "${GALE_E2E_STREAMS:-200}" "${GALE_E2E_MALFORMED:-300}" || fail "load test"

# ---- gale bench serve against this server: a short run, JSON and HTML written
GALE_API_KEY=$key "$gale" bench serve --base-url "$url" --num-prompts 12 --request-rate 8,inf --input-len 32 \
  --output-len 8 --range-ratio 0.5 --json /tmp/gale-e2e-$$.json --html /tmp/gale-e2e-$$.html >/dev/null || fail "bench serve"
python3 - /tmp/gale-e2e-$$.json /tmp/gale-e2e-$$.html <<'PY' || fail "bench serve output"
import json, re, sys, xml.dom.minidom
j = json.load(open(sys.argv[1]))
assert [r["completed"] for r in j["runs"]] == [12, 12], j
assert all(r["ttft_ms"]["p50"] > 0 and r["output_throughput"] > 0 for r in j["runs"]), j
svgs = re.findall(r"<svg.*?</svg>", open(sys.argv[2]).read(), re.S)
assert len(svgs) == 5
for s in svgs: xml.dom.minidom.parseString(s)
PY
echo "e2e: bench serve passed"

# ---- SIGTERM drains: an in-flight stream completes, new connections are refused, exit 0
curl -sN "$url/v1/completions" -H "Authorization: Bearer $key" \
  -d '{"prompt":"def f(x):","max_tokens":150,"ignore_eos":true,"temperature":0,"stream":true}' >"$out" &
cpid=$!
sleep 0.5
kill -TERM "$pid"
wait "$cpid" || fail "the in-flight stream failed during the drain"
tail -c 14 "$out" | grep -q 'data: \[DONE\]' || fail "the in-flight stream was cut by the drain"
rc=0
wait "$pid" || rc=$?
pid=""
[ "$rc" = 0 ] || fail "server exit status $rc after SIGTERM"
grep -q "draining" "$log" || fail "no drain message"
echo "e2e: all server tests passed"
