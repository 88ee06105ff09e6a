"""The Python module `gale` against the `gale` CLI (an independent path: its own option parsing,
tokenization and one request per process) on the bundled model.

Run by ctest (Python.Api) with PYTHONPATH, GALE_BINARY and GALE_MODEL_DIR set; by hand:
    PYTHONPATH=build/python GALE_BINARY=build/gale GALE_MODEL_DIR=models/default python3 -m pytest tests/python
"""
import json
import math
import os
import pathlib
import re
import subprocess
import threading

import pytest

import gale

GALE = os.environ.get("GALE_BINARY", "build/gale")
MODEL = os.environ.get("GALE_MODEL_DIR", "models/default")
SOURCE = pathlib.Path(os.environ.get("GALE_SOURCE_DIR", pathlib.Path(__file__).resolve().parents[2]))
PROMPTS = ["def fibonacci(n):", "import os\n", "class Stack:\n    def push(self, x):", "#", "for i in range(10):"]


def cli(*args):
    out = subprocess.run([GALE, *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def cli_generate(*args):
    return cli("generate", "-m", MODEL, "--json", *args)


@pytest.fixture(scope="module")
def llm():
    return gale.LLM(model=MODEL, max_num_seqs=8)


def test_greedy_equals_cli(llm):
    params = gale.SamplingParams(max_tokens=40, temperature=0)
    outs = llm.generate(PROMPTS[:3], params)
    assert len(outs) == 3
    for prompt, out in zip(PROMPTS, outs):
        want = cli_generate("-p", prompt, "-n", "40", "--temperature", "0")
        assert out.prompt == prompt
        assert out.prompt_token_ids == cli("tokenize", "-m", MODEL, "--text", prompt, "--json")["ids"]
        assert out.finished
        assert len(out.outputs) == 1
        got = out.outputs[0]
        assert got.token_ids == want["ids"]
        assert got.text == want["text"]
        assert got.finish_reason == want["finish_reason"]
        assert len(got.token_ids) > 0


SAMPLING_CASES = [  # (SamplingParams field, value, the CLI's flag)
    ("presence_penalty", 1.5, "--presence-penalty"), ("frequency_penalty", 1.5, "--frequency-penalty"),
    ("repetition_penalty", 1.3, "--repetition-penalty"), ("top_k", 5, "--top-k"), ("top_p", 0.5, "--top-p"),
    ("min_p", 0.2, "--min-p")]


def test_sampling_params_equal_cli():
    """Seeded sampling: each parameter alone gives the CLI's tokens for its flag, and changes the
    output (so it reached the sampler, under its own name). Without speculation on either side:
    with it the draws depend on how many tokens each step verified."""
    llm = gale.LLM(model=MODEL, speculative="off")
    prompt, base = "def parse(line):", dict(max_tokens=48, temperature=0.9, seed=1234)
    flags = ["-p", prompt, "-n", "48", "--temperature", "0.9", "--seed", "1234", "--speculative", "off"]
    plain = llm.generate(prompt, gale.SamplingParams(**base))[0].outputs[0].token_ids
    assert plain == cli_generate(*flags)["ids"]
    for name, value, flag in SAMPLING_CASES:
        got = llm.generate(prompt, gale.SamplingParams(**base, **{name: value}))[0].outputs[0]
        want = cli_generate(*flags, flag, str(value))
        assert got.token_ids == want["ids"], name
        assert got.text == want["text"], name
        assert got.token_ids != plain, name
    # The same seed draws the same tokens; another seed others.
    again = llm.generate(prompt, gale.SamplingParams(**base))[0].outputs[0].token_ids
    other = llm.generate(prompt, gale.SamplingParams(**{**base, "seed": 99}))[0].outputs[0].token_ids
    assert again == plain and other != plain


def test_batch_equals_each_alone(llm):
    params = gale.SamplingParams(max_tokens=24, temperature=0)
    together = llm.generate(PROMPTS, params)
    for prompt, out in zip(PROMPTS, together):
        alone = llm.generate([prompt], params)[0]
        assert out.outputs[0].token_ids == alone.outputs[0].token_ids
        assert out.outputs[0].text == alone.outputs[0].text
    # One SamplingParams per prompt, and token-id prompts.
    per = [gale.SamplingParams(max_tokens=n, temperature=0) for n in (3, 9)]
    ids = {"prompt_token_ids": together[1].prompt_token_ids}
    a, b = llm.generate([PROMPTS[0], ids], per)
    assert a.outputs[0].token_ids == together[0].outputs[0].token_ids[:3]
    assert a.outputs[0].finish_reason == "length"
    assert b.prompt is None and b.outputs[0].token_ids == together[1].outputs[0].token_ids[:9]


def test_stream_concatenation_equals_generate(llm):
    params = gale.SamplingParams(max_tokens=40, temperature=0)
    whole = llm.generate(PROMPTS[0], params)[0].outputs[0]
    pieces = list(llm.generate_stream(PROMPTS[0], params))
    assert len(pieces) > 1
    assert "".join(p.text for p in pieces) == whole.text
    assert [t for p in pieces for t in p.token_ids] == whole.token_ids
    assert pieces[-1].finished and pieces[-1].finish_reason == whole.finish_reason
    assert not any(p.finished for p in pieces[:-1])


def test_streams_interleave_with_generate(llm):
    """Two streams and a generate() in flight together: each gets exactly its own tokens."""
    params = gale.SamplingParams(max_tokens=20, temperature=0)
    want = [o.outputs[0].text for o in llm.generate(PROMPTS[:3], params)]
    s1, s2 = llm.generate_stream(PROMPTS[0], params), llm.generate_stream(PROMPTS[1], params)
    t1 = next(s1).text
    mid = llm.generate(PROMPTS[2], params)[0].outputs[0].text
    t1 += "".join(p.text for p in s1)
    t2 = "".join(p.text for p in s2)
    assert [t1, t2, mid] == want
    # An abandoned stream stops its request; the engine goes on serving others.
    s3 = llm.generate_stream(PROMPTS[3], gale.SamplingParams(max_tokens=200, temperature=0))
    next(s3)
    s3.close()
    assert list(s3) == []
    assert llm.generate(PROMPTS[0], params)[0].outputs[0].text == want[0]


def test_stop_string_equals_cli(llm):
    params = gale.SamplingParams(max_tokens=40, temperature=0)
    text = llm.generate(PROMPTS[0], params)[0].outputs[0].text
    stop = text[len(text) // 2:len(text) // 2 + 3]
    out = llm.generate(PROMPTS[0], gale.SamplingParams(max_tokens=40, temperature=0, stop=[stop]))[0].outputs[0]
    want = cli_generate("-p", PROMPTS[0], "-n", "40", "--temperature", "0", "--stop", stop)
    assert out.text == want["text"] == text[:text.index(stop)]
    assert out.finish_reason == want["finish_reason"] == "stop"


def test_tokenizer_equals_cli(llm):
    tok = llm.get_tokenizer()
    text = "héllo wörld\n\tdef f(x): return x ** 2  # ünïcode ✓"
    ids = tok.encode(text)
    assert ids == cli("tokenize", "-m", MODEL, "--text", text, "--json")["ids"]
    assert tok.encode(text, add_special_tokens=False) == cli("tokenize", "-m", MODEL, "--text", text, "--no-special",
                                                             "--json")["ids"]
    assert tok.decode(ids) == cli("detokenize", "-m", MODEL, "--ids", ",".join(map(str, ids)), "--json")["text"]
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert tok.vocab_size > 1000


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """The bundled model with the e2e tests' chat template in its folder (links to its files)."""
    d = tmp_path_factory.mktemp("chat-model")
    for f in pathlib.Path(MODEL).iterdir():
        (d / f.name).symlink_to(f.resolve())
    (d / "chat_template.jinja").write_text((SOURCE / "tests/e2e/chat_template.jinja").read_text())
    return d


def test_chat_equals_cli(chat_model, tmp_path):
    messages = [{"role": "system", "content": "You write Python."},
                {"role": "user", "content": "A function that adds two numbers."}]
    (tmp_path / "m.json").write_text(json.dumps(messages))
    rendered = cli("chat-template", "-m", str(chat_model), "--messages", str(tmp_path / "m.json"),
                   "--add-generation-prompt", "--json")["text"]
    ids = cli("tokenize", "-m", str(chat_model), "--text", rendered, "--no-special", "--json")["ids"]
    want = cli("generate", "-m", str(chat_model), "--ids", ",".join(map(str, ids)), "-n", "24", "--temperature", "0",
               "--json")
    params = gale.SamplingParams(max_tokens=24, temperature=0)
    for llm in (gale.LLM(model=str(chat_model)),  # the folder's template
                gale.LLM(model=MODEL, chat_template=str(SOURCE / "tests/e2e/chat_template.jinja"))):  # given
        out = llm.chat(messages, params)[0]
        assert out.prompt == rendered
        assert out.prompt_token_ids == ids
        assert out.outputs[0].token_ids == want["ids"]
        assert out.outputs[0].text == want["text"]
        assert llm.get_tokenizer().apply_chat_template(messages) == rendered
        # A batch of conversations.
        two = llm.chat([messages, messages[1:]], params)
        assert two[0].outputs[0].text == want["text"] and len(two) == 2


def test_threads_run_concurrently_and_correctly(llm):
    """generate() releases the GIL: two Python threads at once get their own, correct outputs."""
    params = gale.SamplingParams(max_tokens=24, temperature=0)
    want = {p: llm.generate(p, params)[0].outputs[0].text for p in PROMPTS[:2]}
    got = {}

    def work(p):
        got[p] = llm.generate(p, params)[0].outputs[0].text

    threads = [threading.Thread(target=work, args=(p,)) for p in PROMPTS[:2]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == want


def test_default_params_follow_generation_config(llm):
    """No SamplingParams: the model's generation_config (greedy here) and vLLM's 16 tokens."""
    out = llm.generate(PROMPTS[0])[0].outputs[0]
    want = cli_generate("-p", PROMPTS[0], "-n", "16")
    assert out.token_ids == want["ids"] and len(out.token_ids) == 16


def test_bad_inputs_raise(llm, tmp_path):
    with pytest.raises(RuntimeError, match="no-such-folder"):
        gale.LLM(model=str(tmp_path / "no-such-folder"))
    with pytest.raises(ValueError, match="not_an_engine_arg"):
        gale.LLM(model=MODEL, not_an_engine_arg=3)
    with pytest.raises(ValueError, match="max_num_seqs"):
        gale.LLM(model=MODEL, max_num_seqs=0)
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        gale.LLM(model=MODEL, kv_cache_dtype="int3")
    with pytest.raises(ValueError, match="temperature"):
        llm.generate("x", gale.SamplingParams(temperature=-1))
    with pytest.raises(ValueError, match="top_p"):
        llm.generate("x", gale.SamplingParams(top_p=0))
    with pytest.raises(ValueError, match="max_tokens"):
        llm.generate("x", gale.SamplingParams(max_tokens=-1))
    with pytest.raises(ValueError):
        llm.generate("x", gale.SamplingParams(max_tokens=10**9))  # past the context
    with pytest.raises(ValueError, match="n must be"):
        llm.generate("x", gale.SamplingParams(n=0))
    with pytest.raises(ValueError, match="n must be 1"):
        llm.generate_stream("x", gale.SamplingParams(n=2))
    with pytest.raises(ValueError, match="logprobs"):
        llm.generate("x", gale.SamplingParams(logprobs=21))
    with pytest.raises(ValueError, match="one of"):
        gale.StructuredOutputsParams(regex="a", choice=["b"])
    with pytest.raises(ValueError, match="regex"):
        llm.generate("x", gale.SamplingParams(structured_outputs=gale.StructuredOutputsParams(regex="a(b")))
    with pytest.raises(ValueError, match="not supported"):
        llm.generate("x", gale.SamplingParams(structured_outputs=gale.StructuredOutputsParams(json={"type": "object", "if": {}})))
    with pytest.raises(ValueError):
        llm.generate({"prompt_token_ids": [10**6]})
    with pytest.raises(ValueError):
        llm.generate({"prompt_token_ids": [-1]})
    with pytest.raises(ValueError, match="empty"):
        llm.generate({"prompt_token_ids": []})
    with pytest.raises(ValueError):
        llm.generate(123)
    with pytest.raises(ValueError):
        llm.generate(["a", "b"], [gale.SamplingParams()])
    with pytest.raises(ValueError, match="chat template"):
        llm.chat([{"role": "user", "content": "hi"}])
    with pytest.raises(ValueError):
        llm.get_tokenizer().decode([-5])
    with pytest.raises(TypeError):
        gale.SamplingParams(temperature="hot")
    # Nothing above broke the engine.
    assert llm.generate([], gale.SamplingParams()) == []
    assert len(llm.generate("x", gale.SamplingParams(max_tokens=2, temperature=0))[0].outputs[0].token_ids) == 2


def test_n_completions_are_the_seeded_runs(llm):
    """n=3 with a seed: completions 0..2 are the runs with seeds seed, seed+1, seed+2 (the server's rule)."""
    many = llm.generate(PROMPTS[:2], gale.SamplingParams(n=3, max_tokens=12, temperature=1.0, seed=40))
    assert [len(o.outputs) for o in many] == [3, 3]
    for prompt, out in zip(PROMPTS, many):
        assert [c.index for c in out.outputs] == [0, 1, 2]
        for j, c in enumerate(out.outputs):
            alone = llm.generate(prompt, gale.SamplingParams(max_tokens=12, temperature=1.0, seed=40 + j))[0].outputs[0]
            assert c.token_ids == alone.token_ids
    assert len({tuple(c.token_ids) for c in many[0].outputs}) > 1, "three seeds drew the same tokens"


def log_softmax(row):
    m = max(row)
    z = m + math.log(sum(math.exp(x - m) for x in row))
    return [x - z for x in row]


def test_logprobs_equal_the_cli_logits(llm):
    """Each token's logprob and the top 3 against log_softmax of `gale logits` over the same prefix."""
    prompt_ids = llm.get_tokenizer().encode(PROMPTS[0])
    out = llm.generate({"prompt_token_ids": prompt_ids}, gale.SamplingParams(max_tokens=5, temperature=0, logprobs=3))[0]
    c = out.outputs[0]
    assert len(c.logprobs) == len(c.token_ids) == 5
    total = 0.0
    for t, (tok, lp) in enumerate(zip(c.token_ids, c.logprobs)):
        ids = prompt_ids + c.token_ids[:t]
        ref = log_softmax(cli("logits", "-m", MODEL, "--ids", ",".join(map(str, ids)), "--json")["last"])
        top = sorted(range(len(ref)), key=lambda i: (-ref[i], i))[:3]
        assert set(lp) == set(top) | {tok}
        assert lp[tok].logprob == pytest.approx(ref[tok], abs=1e-4)
        assert lp[tok].rank == 1  # greedy: the chosen token is the most likely
        for r, i in enumerate(top):
            assert lp[i].rank == r + 1
            assert lp[i].logprob == pytest.approx(ref[i], abs=1e-4)
        assert lp[tok].decoded_token == llm.get_tokenizer().decode([tok])
        total += lp[tok].logprob
    assert c.cumulative_logprob == pytest.approx(total, abs=1e-4)
    assert llm.generate(PROMPTS[0], gale.SamplingParams(max_tokens=2))[0].outputs[0].logprobs is None


def test_structured_outputs(llm):
    """Outputs follow their constraint, checked by Python's json and re, not by Gale's matcher."""
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                               "n": {"type": "integer", "minimum": 0}},
              "required": ["name", "n"], "additionalProperties": False}
    cases = [
        (gale.StructuredOutputsParams(json=schema), lambda t: set(json.loads(t)) == {"name", "n"}
         and isinstance(json.loads(t)["n"], int) and len(json.loads(t)["name"]) <= 8),
        (gale.StructuredOutputsParams(json=json.dumps(schema)), lambda t: set(json.loads(t)) == {"name", "n"}),
        (gale.StructuredOutputsParams(regex=r"[a-c]{2}-[0-9]{1,3}"), lambda t: re.fullmatch(r"[a-c]{2}-[0-9]{1,3}", t)),
        (gale.StructuredOutputsParams(choice=["red", "blue sky"]), lambda t: t in ("red", "blue sky")),
        (gale.StructuredOutputsParams(grammar='root ::= "<" [a-z]{1,5} ">"'), lambda t: re.fullmatch(r"<[a-z]{1,5}>", t)),
        (gale.GuidedDecodingParams(choice=["up", "down"]), lambda t: t in ("up", "down")),
    ]
    for so, ok in cases:
        params = gale.SamplingParams(n=2, max_tokens=200, temperature=1.0, seed=9, structured_outputs=so)
        for c in llm.generate("Answer:", params)[0].outputs:
            assert c.finish_reason == "stop", (so, c.text)
            assert ok(c.text), (so, c.text)
    # json_object bounds nothing (strings, nesting): an output cut by max_tokens is not checked.
    obj = gale.SamplingParams(max_tokens=200, temperature=1.0, seed=3,
                              structured_outputs=gale.StructuredOutputsParams(json_object=True))
    c = llm.generate("Answer:", obj)[0].outputs[0]
    assert c.text.startswith("{")
    if c.finish_reason == "stop":
        assert isinstance(json.loads(c.text), dict), c.text
    legacy = gale.SamplingParams(max_tokens=50, guided_decoding=gale.GuidedDecodingParams(regex="(yes|no)"))
    assert llm.generate("x", legacy)[0].outputs[0].text in ("yes", "no")
