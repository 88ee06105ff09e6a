// Tool calls and reasoning through the official openai npm client, against the real HTTP server
// over a scripted fake engine (fake_serve: the real Qwen3 chat template, canned model output).
// The client's own stream accumulator (chat.completions.stream -> finalChatCompletion) must
// rebuild from our deltas the message the non-streamed request returns.
// Usage: GALE_URL=http://127.0.0.1:PORT node tools_client_test.mjs
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const client = new OpenAI({ baseURL: `${process.env.GALE_URL}/v1`, apiKey: 'unused', maxRetries: 0 });
const model = 'fake-qwen3';
const tools = [
  { type: 'function', function: { name: 'get_weather', description: 'Current weather in a city',
    parameters: { type: 'object', properties: { city: { type: 'string' }, unit: { type: 'string', enum: ['celsius', 'fahrenheit'] } },
                  required: ['city'] } } },
  { type: 'function', function: { name: 'get_time', parameters: { type: 'object', properties: { tz: { type: 'string' } } } } },
];
const user = (content) => [{ role: 'user', content }];

const tests = [];
const test = (name, fn) => tests.push({ name, fn });

async function raw(params) {
  const chunks = [];
  for await (const c of await client.chat.completions.create({ ...params, stream: true })) chunks.push(c);
  return chunks;
}

test('a tool call: full response', async () => {
  const r = await client.chat.completions.create({ model, messages: user('KW_WEATHER in Paris?'), tools });
  const c = r.choices[0];
  assert.equal(c.finish_reason, 'tool_calls');
  assert.equal(c.message.content, null);
  assert.equal(c.message.tool_calls.length, 1);
  const tc = c.message.tool_calls[0];
  assert.equal(tc.type, 'function');
  assert.match(tc.id, /^call_[0-9a-f]{24}$/);
  assert.equal(tc.function.name, 'get_weather');
  assert.deepEqual(JSON.parse(tc.function.arguments), { city: 'Paris', unit: 'celsius' });
});

test('two tool calls streamed: the client accumulator rebuilds the full message', async () => {
  const params = { model, messages: user('KW_TWO: weather in Oslo and time in Rome'), tools };
  const full = (await client.chat.completions.create(params)).choices[0];
  const stream = client.chat.completions.stream(params);
  const names = [];
  stream.on('tool_calls.function.arguments.done', (e) => names.push(e.name));
  const fin = (await stream.finalChatCompletion()).choices[0];
  assert.equal(fin.finish_reason, 'tool_calls');
  assert.equal(full.finish_reason, 'tool_calls');
  assert.equal(fin.message.content, 'Checking both.');
  assert.equal(full.message.content, 'Checking both.');
  assert.equal(fin.message.tool_calls.length, 2);
  for (let i = 0; i < 2; i++) {
    assert.equal(fin.message.tool_calls[i].function.name, full.message.tool_calls[i].function.name);
    assert.equal(fin.message.tool_calls[i].function.arguments, full.message.tool_calls[i].function.arguments);
  }
  assert.deepEqual(JSON.parse(fin.message.tool_calls[1].function.arguments), { tz: 'Europe/Rome' });
  assert.deepEqual(names, ['get_weather', 'get_time']);
  // Arguments arrive in several deltas; only a call's first delta has its id and name.
  const deltas = (await raw(params)).flatMap((c) => c.choices[0]?.delta?.tool_calls ?? []);
  assert.ok(deltas.length > 4, `${deltas.length} tool-call deltas`);
  for (const d of deltas) assert.equal('id' in d, 'name' in (d.function ?? {}));
});

test('reasoning_content: full and streamed', async () => {
  const params = { model, messages: user('KW_THINK 2+2?') };
  const m = (await client.chat.completions.create(params)).choices[0].message;
  assert.equal(m.reasoning_content, '\nTwo plus two is four.\n');
  assert.equal(m.content, 'The answer is 4.');
  let reasoning = '', content = '';
  for (const c of await raw(params)) {
    const d = c.choices[0]?.delta ?? {};
    reasoning += d.reasoning_content ?? '';
    content += d.content ?? '';
  }
  assert.equal(reasoning, m.reasoning_content);
  assert.equal(content, m.content);
});

test('reasoning then a tool call, streamed', async () => {
  const params = { model, messages: user('KW_THINK_CALL'), tools, tool_choice: 'auto' };
  const fin = (await client.chat.completions.stream(params).finalChatCompletion()).choices[0];
  assert.equal(fin.finish_reason, 'tool_calls');
  assert.deepEqual(JSON.parse(fin.message.tool_calls[0].function.arguments), { city: 'Zürich' });
  const full = (await client.chat.completions.create(params)).choices[0].message;
  assert.equal(full.reasoning_content, '\nI need the weather tool.\n');
});

test('a malformed call stays text; tool_choice none leaves the text alone', async () => {
  const m = (await client.chat.completions.create({ model, messages: user('KW_BROKEN'), tools })).choices[0];
  assert.equal(m.finish_reason, 'stop');
  assert.equal(m.message.content, 'I would call <tool_call>{"name": oops}</tool_call> but no.');
  assert.equal(m.message.tool_calls, undefined);
  const n = (await client.chat.completions.create({ model, messages: user('KW_WEATHER'), tools, tool_choice: 'none' })).choices[0];
  assert.match(n.message.content, /^<tool_call>/);
});

test('the tool result turn: the client-shaped history is accepted', async () => {
  const first = (await client.chat.completions.create({ model, messages: user('KW_WEATHER'), tools })).choices[0].message;
  const messages = [...user('KW_WEATHER'), first,
    { role: 'tool', tool_call_id: first.tool_calls[0].id, content: JSON.stringify({ temperature: 21 }) }];
  const r = await client.chat.completions.create({ model, messages: [...messages, ...user('and now?')], tools });
  assert.equal(r.choices[0].message.content, 'It is sunny.');
});

test('bad tools and tool_choice are OpenAI-style 400s', async () => {
  const cases = [
    [{ tools: [{ type: 'function', function: { name: 'has space' } }] }, 'tools'],
    [{ tools: [] }, 'tools'],
    [{ tool_choice: 'required' }, 'tool_choice'],
    [{ tools, tool_choice: { type: 'function', function: { name: 'nope' } } }, 'tool_choice'],
    [{ tools, tool_choice: 'sometimes' }, 'tool_choice'],
  ];
  for (const [extra, param] of cases) {
    try {
      await client.chat.completions.create({ model, messages: user('hi'), ...extra });
      assert.fail(`accepted ${JSON.stringify(extra)}`);
    } catch (e) {
      assert.ok(e instanceof OpenAI.APIError, String(e));
      assert.equal(e.status, 400);
      assert.equal(e.error.param, param, e.message);
      assert.equal(e.error.type, 'invalid_request_error');
    }
  }
});

let failed = 0;
for (const t of tests) {
  try {
    await t.fn();
    console.log(`ok - ${t.name}`);
  } catch (e) {
    failed++;
    console.log(`not ok - ${t.name}\n  ${e.stack?.split('\n').slice(0, 6).join('\n  ')}`);
  }
}
console.log(`${tests.length - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
