// gale serve through the official openai npm client: completions and chat, streaming and not,
// stop sequences, logprobs, n > 1, seeds, echo, and the error cases.
// Usage: GALE_URL=http://127.0.0.1:PORT GALE_API_KEY=KEY GALE_BIN=build/gale node client_test.mjs
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import OpenAI from 'openai';

const base = process.env.GALE_URL;
const key = process.env.GALE_API_KEY;
const model = process.env.GALE_MODEL_NAME || 'default';
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: key, maxRetries: 0 });
const prompt = 'def fibonacci(n):';

const tests = [];
const test = (name, fn) => tests.push({ name, fn });

// What `gale generate` prints for the same greedy request: the reference for HTTP output.
function generate(args) {
  const out = execFileSync(process.env.GALE_BIN, ['generate', '--json', '--temperature', '0', ...args],
                           { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  return JSON.parse(out);
}

async function expectApiError(promise, status, param) {
  try {
    await promise;
  } catch (e) {
    assert.ok(e instanceof OpenAI.APIError, `expected an APIError, got ${e}`);
    assert.equal(e.status, status, `status of: ${e.message}`);
    assert.equal(typeof e.error?.message, 'string', 'error body has a message');
    assert.ok('type' in e.error && 'param' in e.error && 'code' in e.error, 'OpenAI error shape');
    if (param !== undefined) assert.equal(e.error.param, param);
    return e;
  }
  assert.fail(`expected HTTP ${status}`);
}

async function collect(stream) {
  const chunks = [];
  for await (const c of stream) chunks.push(c);
  return chunks;
}

test('models', async () => {
  const page = await client.models.list();
  assert.deepEqual(page.data.map((m) => m.id), [model]);
});

test('greedy completion equals gale generate', async () => {
  const ref = generate(['-p', prompt, '-n', '32']);
  const r = await client.completions.create({ model, prompt, max_tokens: 32, temperature: 0 });
  assert.equal(r.object, 'text_completion');
  assert.match(r.id, /^cmpl-/);
  assert.equal(r.choices.length, 1);
  assert.equal(r.choices[0].text, ref.text);
  assert.equal(r.choices[0].finish_reason, ref.finish_reason);
  assert.equal(r.usage.prompt_tokens, ref.usage.prompt_tokens);
  assert.equal(r.usage.completion_tokens, ref.usage.completion_tokens);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
});

test('token-id prompt equals gale generate --ids', async () => {
  const ref = generate(['--ids', '5,6,7,8', '-n', '16']);
  const r = await client.completions.create({ model, prompt: [5, 6, 7, 8], max_tokens: 16, temperature: 0 });
  assert.equal(r.choices[0].text, ref.text);
});

test('streamed completion equals the non-streamed one', async () => {
  const full = await client.completions.create({ model, prompt, max_tokens: 40, temperature: 0 });
  const chunks = await collect(await client.completions.create({
    model, prompt, max_tokens: 40, temperature: 0, stream: true, stream_options: { include_usage: true } }));
  const last = chunks.at(-1);
  assert.deepEqual(last.choices, []);
  assert.equal(last.usage.completion_tokens, full.usage.completion_tokens);
  const text = chunks.slice(0, -1).map((c) => c.choices[0].text).join('');
  assert.equal(text, full.choices[0].text);
  const finishes = chunks.slice(0, -1).map((c) => c.choices[0].finish_reason).filter((f) => f !== null);
  assert.deepEqual(finishes, [full.choices[0].finish_reason]);
  for (const c of chunks) assert.equal(c.id, chunks[0].id);
});

test('stop sequences are honoured and never emitted', async () => {
  const full = (await client.completions.create({ model, prompt, max_tokens: 48, temperature: 0 })).choices[0].text;
  const stop = full.slice(12, 16);  // a piece in the middle: likely across token boundaries
  const cut = full.slice(0, full.indexOf(stop));
  const ref = generate(['-p', prompt, '-n', '48', '--stop', stop]);
  assert.equal(ref.text, cut);
  const r = await client.completions.create({ model, prompt, max_tokens: 48, temperature: 0, stop: [stop, 'zzzz'] });
  assert.equal(r.choices[0].text, cut);
  assert.equal(r.choices[0].finish_reason, 'stop');
  const chunks = await collect(await client.completions.create({ model, prompt, max_tokens: 48, temperature: 0, stop, stream: true }));
  assert.equal(chunks.map((c) => c.choices[0].text).join(''), cut);
  assert.equal(chunks.at(-1).choices[0].finish_reason, 'stop');
});

test('completion logprobs', async () => {
  const r = await client.completions.create({ model, prompt, max_tokens: 8, temperature: 0, logprobs: 3 });
  const lp = r.choices[0].logprobs;
  assert.equal(lp.tokens.length, 8);
  assert.equal(lp.token_logprobs.length, 8);
  assert.equal(lp.top_logprobs.length, 8);
  assert.equal(lp.text_offset.length, 8);
  assert.equal(lp.tokens.join(''), r.choices[0].text);
  for (let i = 0; i < 8; ++i) {
    assert.ok(lp.token_logprobs[i] <= 0);
    const top = Object.values(lp.top_logprobs[i]);
    assert.ok(top.length >= 1 && top.length <= 3);
    // Greedy: the chosen token is the most likely one.
    assert.ok(Math.abs(Math.max(...top) - lp.token_logprobs[i]) < 1e-4);
  }
  const chunks = await collect(await client.completions.create({ model, prompt, max_tokens: 8, temperature: 0, logprobs: 2, stream: true }));
  const streamed = chunks.flatMap((c) => c.choices[0].logprobs?.token_logprobs ?? []);
  assert.equal(streamed.length, 8);
  for (let i = 0; i < 8; ++i) assert.ok(Math.abs(streamed[i] - lp.token_logprobs[i]) < 1e-4);
});

test('n > 1, list prompts and seeds', async () => {
  const r = await client.completions.create({ model, prompt, max_tokens: 12, temperature: 1.0, n: 3, seed: 42 });
  assert.deepEqual(r.choices.map((c) => c.index), [0, 1, 2]);
  const again = await client.completions.create({ model, prompt, max_tokens: 12, temperature: 1.0, n: 3, seed: 42 });
  assert.deepEqual(again.choices.map((c) => c.text), r.choices.map((c) => c.text), 'same seed, same samples');
  assert.equal(r.usage.completion_tokens, r.choices.reduce((s, c) => s + (c.finish_reason === 'length' ? 12 : 0), 0) ||
               r.usage.completion_tokens);
  const two = await client.completions.create({ model, prompt: ['import os', 'class A:'], max_tokens: 6, temperature: 0, n: 2 });
  assert.equal(two.choices.length, 4);
  assert.equal(two.choices[0].text, two.choices[1].text);   // greedy: both samples of prompt 0 agree
  const s = await collect(await client.completions.create({ model, prompt, max_tokens: 6, temperature: 0.7, n: 2, stream: true }));
  assert.deepEqual([...new Set(s.map((c) => c.choices[0].index))].sort(), [0, 1]);
});

test('echo', async () => {
  const r = await client.completions.create({ model, prompt, max_tokens: 4, temperature: 0, echo: true });
  assert.ok(r.choices[0].text.startsWith(prompt));
});

test('chat: full and streamed, template applied', async () => {
  const messages = [{ role: 'system', content: 'You write Python.' }, { role: 'user', content: 'def add(a, b):' }];
  const r = await client.chat.completions.create({ model, messages, max_completion_tokens: 24, temperature: 0 });
  assert.equal(r.object, 'chat.completion');
  assert.match(r.id, /^chatcmpl-/);
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(typeof r.choices[0].message.content, 'string');
  // The same prompt tokens through /v1/completions give the same greedy text.
  const tok = await (await fetch(`${base}/tokenize`, { method: 'POST', headers: { Authorization: `Bearer ${key}` },
                                                        body: JSON.stringify({ messages }) })).json();
  assert.equal(tok.count, r.usage.prompt_tokens);
  const viaIds = await client.completions.create({ model, prompt: tok.tokens, max_tokens: 24, temperature: 0 });
  assert.equal(viaIds.choices[0].text, r.choices[0].message.content);
  const chunks = await collect(await client.chat.completions.create({
    model, messages, max_tokens: 24, temperature: 0, stream: true, stream_options: { include_usage: true } }));
  assert.equal(chunks[0].choices[0].delta.role, 'assistant');
  assert.equal(chunks.filter((c) => c.choices.length).map((c) => c.choices[0].delta.content ?? '').join(''), r.choices[0].message.content);
  assert.equal(chunks.at(-1).usage.prompt_tokens, r.usage.prompt_tokens);
  for (const c of chunks) assert.equal(c.object, 'chat.completion.chunk');
});

test('chat: logprobs, stop, n, template kwargs', async () => {
  const messages = [{ role: 'user', content: 'import numpy as np' }];
  const r = await client.chat.completions.create({ model, messages, max_tokens: 6, temperature: 0, logprobs: true, top_logprobs: 2, n: 2,
                                                    chat_template_kwargs: { enable_thinking: false } });
  assert.equal(r.choices.length, 2);
  const c = r.choices[0].logprobs.content;
  assert.equal(c.length, r.choices[0].finish_reason === 'length' ? 6 : c.length);
  assert.ok(c.every((t) => t.logprob <= 0 && t.top_logprobs.length <= 2 && Array.isArray(t.bytes)));
  const full = r.choices[0].message.content;
  if (full.length > 4) {
    const stop = full.slice(2, 4);
    const s = await client.chat.completions.create({ model, messages, max_tokens: 6, temperature: 0, stop });
    assert.equal(s.choices[0].message.content, full.slice(0, full.indexOf(stop)));
    assert.equal(s.choices[0].finish_reason, 'stop');
  }
});

// Structured output over HTTP (issue 22): each output checked by rules written out here and by
// JavaScript's own JSON parser and RegExp, never by Gale's matcher.
const citySchema = {
  type: 'object',
  properties: { city: { type: 'string', maxLength: 12 }, pop: { type: 'integer', minimum: 0 },
                tags: { type: 'array', items: { enum: ['old', 'new'] }, maxItems: 3 } },
  required: ['city', 'pop'],
  additionalProperties: false,
};
function checkCity(text) {
  const j = JSON.parse(text);
  assert.equal(typeof j, 'object');
  assert.ok(j !== null && !Array.isArray(j), text);
  assert.equal(typeof j.city, 'string', text);
  assert.ok([...j.city].length <= 12, text);
  assert.ok(Number.isInteger(j.pop) && j.pop >= 0, text);
  if ('tags' in j) {
    assert.ok(Array.isArray(j.tags) && j.tags.length <= 3, text);
    for (const t of j.tags) assert.ok(t === 'old' || t === 'new', text);
  }
  for (const k of Object.keys(j)) assert.ok(['city', 'pop', 'tags'].includes(k), text);
}

test('structured output: response_format json_schema, chat and completions, streamed and not', async () => {
  const response_format = { type: 'json_schema', json_schema: { name: 'city', strict: true, schema: citySchema } };
  const msgs = [{ role: 'user', content: 'A city as JSON' }];
  for (const temperature of [0, 1]) {
    const r = await client.chat.completions.create({ model, messages: msgs, max_tokens: 200, temperature, seed: 11, response_format });
    assert.equal(r.choices[0].finish_reason, 'stop', r.choices[0].message.content);
    checkCity(r.choices[0].message.content);
    const chunks = await collect(await client.chat.completions.create({
      model, messages: msgs, max_tokens: 200, temperature, seed: 11, response_format, stream: true }));
    const text = chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('');
    checkCity(text);
    if (temperature === 0) assert.equal(text, r.choices[0].message.content, 'streamed = full');
  }
  const c = await client.completions.create({ model, prompt: 'City:', max_tokens: 200, temperature: 1, seed: 3, response_format, n: 3 });
  assert.equal(c.choices.length, 3);
  for (const ch of c.choices) checkCity(ch.text);
  const o = await client.completions.create({ model, prompt: 'x', max_tokens: 200, temperature: 1, seed: 4, response_format: { type: 'json_object' } });
  if (o.choices[0].finish_reason === 'stop') {
    const v = JSON.parse(o.choices[0].text);
    assert.ok(v !== null && typeof v === 'object' && !Array.isArray(v), o.choices[0].text);
  }
});

test('structured output: guided_regex, guided_choice and guided_grammar', async () => {
  const re = await client.completions.create({ model, prompt: 'x', max_tokens: 30, temperature: 1, seed: 5, guided_regex: '[a-c]{2}-[0-9]{1,3}' });
  assert.match(re.choices[0].text, /^[a-c]{2}-[0-9]{1,3}$/);
  const ch = await client.completions.create({ model, prompt: 'x', max_tokens: 30, temperature: 1, seed: 6, guided_choice: ['red', 'blue sky'] });
  assert.ok(['red', 'blue sky'].includes(ch.choices[0].text), ch.choices[0].text);
  const g = await client.completions.create({ model, prompt: 'x', max_tokens: 40, temperature: 1, seed: 7,
                                              guided_grammar: 'root ::= "<" [a-z]{1,5} ">"' });
  assert.match(g.choices[0].text, /^<[a-z]{1,5}>$/);
});

test('structured output: bad constraints are 400s naming the field', async () => {
  await expectApiError(client.completions.create({ model, prompt, response_format: { type: 'xml' } }), 400, 'response_format');
  await expectApiError(client.completions.create({ model, prompt, response_format: { type: 'json_schema' } }), 400, 'response_format');
  await expectApiError(client.completions.create({ model, prompt, guided_regex: 'a(b' }), 400, 'guided_regex');
  await expectApiError(client.completions.create({ model, prompt, guided_choice: [] }), 400, 'guided_choice');
  await expectApiError(client.completions.create({ model, prompt, guided_grammar: 'root ::= undefined_rule' }), 400, 'guided_grammar');
  await expectApiError(client.completions.create({ model, prompt, guided_regex: 'a', guided_choice: ['b'] }), 400);
  // The server still answers normally afterwards.
  const r = await client.completions.create({ model, prompt, max_tokens: 4, temperature: 0 });
  assert.equal(r.choices.length, 1);
});

test('errors: OpenAI-style 4xx bodies', async () => {
  await expectApiError(client.completions.create({ model: 'no-such-model', prompt }), 404, 'model');
  await expectApiError(client.completions.create({ model, prompt, temperature: 5 }), 400, 'temperature');
  await expectApiError(client.completions.create({ model, prompt, n: 0 }), 400, 'n');
  await expectApiError(client.completions.create({ model, prompt, max_tokens: 100000 }), 400, 'max_tokens');
  await expectApiError(client.completions.create({ model, prompt: 'x '.repeat(3000) }), 400, 'prompt');
  await expectApiError(client.completions.create({ model, prompt, top_p: 0 }), 400, 'top_p');
  await expectApiError(client.completions.create({ model, prompt: [1, 2, 1 << 30] }), 400, 'prompt');
  await expectApiError(client.completions.create({ model, prompt, logprobs: 50 }), 400, 'logprobs');
  await expectApiError(client.completions.create({ model, prompt, stop: 7 }), 400, 'stop');
  await expectApiError(client.chat.completions.create({ model, messages: [] }), 400, 'messages');
  await expectApiError(client.chat.completions.create({ model, messages: [{ role: 'user', content: 'x' }], max_tokens: -1 }), 400, 'max_tokens');
  await expectApiError(client.completions.create({ model, prompt, stream: true, max_tokens: 0 }), 400);
  const bad = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'wrong-key', maxRetries: 0 });
  const e = await expectApiError(bad.models.list(), 401);
  assert.ok(e instanceof OpenAI.AuthenticationError);
  assert.equal((await fetch(`${base}/health`)).status, 200, '/health needs no key');
  assert.equal((await fetch(`${base}/v1/models`)).status, 401);
  const junk = await fetch(`${base}/v1/completions`, { method: 'POST', headers: { Authorization: `Bearer ${key}` }, body: '{"prompt": "x",' });
  assert.equal(junk.status, 400);
  assert.equal(typeof (await junk.json()).error.message, 'string');
});

let failed = 0;
for (const t of tests) {
  const t0 = Date.now();
  try {
    await t.fn();
    console.log(`ok   ${t.name} (${Date.now() - t0} ms)`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${t.name}\n     ${e.stack || e}`);
  }
}
console.log(`${tests.length - failed}/${tests.length} client tests passed`);
process.exit(failed ? 1 : 0);
