// Bounded load test on loopback: many concurrent streaming requests through the openai client,
// a flood of malformed and abandoned requests at the same time; then every valid request must
// have produced the greedy reference text, the server must still answer, the metrics must be back
// to idle (no sequence or KV block leaked) and resident memory back near its warmed-up baseline.
// Usage: GALE_URL=... GALE_API_KEY=... node load_test.mjs [concurrent=200] [malformed=300]
import assert from 'node:assert/strict';
import net from 'node:net';
import OpenAI from 'openai';

const base = process.env.GALE_URL;
const key = process.env.GALE_API_KEY;
const model = process.env.GALE_MODEL_NAME || 'default';
const N = Number(process.argv[2] || 200);
const BAD = Number(process.argv[3] || 300);
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: key, maxRetries: 0, timeout: 600_000 });
const prompts = ['def fibonacci(n):', 'import os\n', 'class Stack:', 'for i in range(10):', 'def main():\n    '];
const auth = { Authorization: `Bearer ${key}` };

async function metrics() {
  const text = await (await fetch(`${base}/metrics`, { headers: auth })).text();
  const m = {};
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    m[line.slice(0, i)] = Number(line.slice(i + 1));
  }
  return m;
}

async function streamOne(prompt, maxTokens) {
  const s = await client.completions.create({ model, prompt, max_tokens: maxTokens, temperature: 0, stream: true });
  let text = '', finish = null;
  for await (const c of s) {
    if (c.choices.length) {
      text += c.choices[0].text;
      finish = c.choices[0].finish_reason ?? finish;
    }
  }
  return { text, finish };
}

// Requests that must fail with a 4xx, or that the client abandons.
function rawSend(bytes) {
  return new Promise((resolve) => {
    const u = new URL(base);
    const sock = net.connect(Number(u.port), u.hostname, () => sock.end(bytes));
    sock.on('data', () => {});
    sock.on('error', () => resolve());
    sock.on('close', () => resolve());
    sock.setTimeout(30000, () => sock.destroy());
  });
}

async function malformed(i) {
  const post = (body, headers = {}) => fetch(`${base}/v1/completions`, { method: 'POST', headers: { ...auth, ...headers }, body });
  switch (i % 10) {
    case 0: return expectStatus(post('{"prompt": "x",'), 400);
    case 1: return expectStatus(post(JSON.stringify({ model, prompt: 'x', temperature: 'hot' })), 400);
    case 2: return expectStatus(post(JSON.stringify({ model, prompt: 'x', n: 0 })), 400);
    case 3: return expectStatus(post(JSON.stringify({ model, prompt: 'x', max_tokens: 1e9 })), 400);
    case 4: return expectStatus(post(JSON.stringify({ model, prompt: [999999999] })), 400);
    case 5: return expectStatus(post(JSON.stringify({ model, prompt: 'x' }), { Authorization: 'Bearer nope' }), 401);
    case 6: return expectStatus(post('['.repeat(5000)), 400);
    case 7: return rawSend('GARBAGE / NOT-HTTP\r\n\r\n');
    case 8: return rawSend('POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"prompt":');  // cut short
    case 9: {  // a streaming request abandoned after its first chunk
      const ac = new AbortController();
      try {
        const s = await client.completions.create({ model, prompt: 'def f(x):', max_tokens: 200, stream: true, ignore_eos: true },
                                                  { signal: ac.signal });
        for await (const c of s) { ac.abort(); break; }
      } catch (e) { /* aborted */ }
      return 'abandoned';
    }
  }
}

async function expectStatus(p, status) {
  const r = await p;
  const body = await r.json();
  assert.equal(r.status, status, JSON.stringify(body));
  assert.equal(typeof body.error.message, 'string');
  return r.status;
}

async function waitIdle() {
  for (let i = 0; i < 300; ++i) {
    const m = await metrics();
    if (m.gale_num_requests_in_flight === 0 && m.gale_num_requests_running === 0 && m.gale_num_requests_waiting === 0)
      return m;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.fail('the server did not return to idle');
}

const t0 = Date.now();
// Greedy references, one request at a time.
const ref = {};
for (const p of prompts) ref[p] = await streamOne(p, 16);

async function round(withFlood) {
  const valid = Array.from({ length: N }, (_, i) => streamOne(prompts[i % prompts.length], 16));
  const flood = withFlood ? Array.from({ length: BAD }, (_, i) => malformed(i)) : [];
  const [v, f] = await Promise.all([Promise.allSettled(valid), Promise.allSettled(flood)]);
  let bad = 0;
  v.forEach((r, i) => {
    const p = prompts[i % prompts.length];
    if (r.status !== 'fulfilled') { bad++; console.log(`request ${i} failed: ${r.reason}`); return; }
    if (r.value.text !== ref[p].text || r.value.finish !== ref[p].finish) {
      bad++;
      console.log(`request ${i}: ${JSON.stringify(r.value)} != ${JSON.stringify(ref[p])}`);
    }
  });
  const floodFailures = f.filter((r) => r.status !== 'fulfilled');
  for (const r of floodFailures.slice(0, 5)) console.log(`malformed request check failed: ${r.reason}`);
  assert.equal(bad, 0, `${bad} of ${N} valid streaming requests went wrong`);
  assert.equal(floodFailures.length, 0, `${floodFailures.length} malformed requests were not answered as expected`);
}

await round(false);                    // warm-up: KV cache, buffers and allocator arenas
const before = await waitIdle();
const rss0 = before.process_resident_memory_bytes;
await round(true);
await round(true);
const after = await waitIdle();
const rss1 = after.process_resident_memory_bytes;
assert.equal((await fetch(`${base}/health`)).status, 200, 'server is up');
assert.equal(after.gale_kv_cache_blocks_free + after.gale_kv_cache_blocks_cached, after.gale_kv_cache_blocks_total,
             'every KV block is free again (or kept only by the prefix cache)');
const aborted = after['gale_requests_total{outcome="abort"}'] - before['gale_requests_total{outcome="abort"}'];
assert.ok(aborted >= 1, `abandoned streams were aborted (${aborted})`);
const grow = rss1 - rss0;
console.log(`load: 3 x ${N} streams + 2 x ${BAD} malformed in ${((Date.now() - t0) / 1000).toFixed(1)} s; ` +
            `${aborted} abandoned streams aborted; RSS ${(rss0 / 2 ** 20).toFixed(1)} -> ${(rss1 / 2 ** 20).toFixed(1)} MiB; ` +
            `prefix-cache hit rate ${after.gale_prefix_cache_hit_rate.toFixed(2)}`);
// Under AddressSanitizer (GALE_E2E_SANITIZED=1) freed memory waits in ASan's quarantine (256 MiB
// by default), so resident memory says nothing about leaks; LeakSanitizer checks at the server's
// exit instead (run_e2e.sh fails on its exit status).
if (process.env.GALE_E2E_SANITIZED === '1') console.log('load: resident memory not checked (sanitized build)');
else assert.ok(grow < Math.max(32 * 2 ** 20, 0.15 * rss0), `resident memory grew by ${(grow / 2 ** 20).toFixed(1)} MiB`);
console.log('load test passed');
