#!/usr/bin/env python3
"""Trains Gale's bundled models from scratch: a byte-level BPE tokenizer, the default target model
(Llama architecture, ~16 M parameters) and its draft model (~2 M) for speculative decoding.

Runs on the GPU device machine (PyTorch, transformers 5.x, tokenizers; no network):
    python3 tools/train/train_default_models.py OUT_DIR

Corpus: Python source code (with its docstrings and comments) under permissive licences, found on
the machine: the standard library of the interpreter that runs this script (PSF licence) plus the
installed packages of PERMISSIVE_PACKAGES (BSD / MIT / Apache-2.0; each one's licence is read from
its metadata into train_log.json). Validation: standard-library files in hash order until 1.1 MB,
never trained on. A small "dev" slice of the training files (also never trained on) picks the
checkpoint with the best held-out loss.

Everything is seeded; the data order is a fixed function of the seed. (GPU kernels may still
differ in the last bits between runs.)

Writes:
  OUT/default/   config.json, model.safetensors (bf16), generation_config.json, tokenizer files
  OUT/draft/     the same for the draft model
  OUT/data/validation.txt, OUT/data/validation-head.txt (first 24 KB, for CI)
  OUT/reference.json  transformers' perplexities and greedy continuations
  OUT/train_log.json  parameter counts, tokens seen, wall time, losses
"""
import hashlib
import json
import math
import os
import sys
import sysconfig
import time

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

OUT = sys.argv[1] if len(sys.argv) > 1 else "train-out"
SEED = 20261125
VOCAB = 8192
CTX = 512
EOT = "<|endoftext|>"

TARGET = dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=6,
              num_key_value_heads=2, head_dim=64)
DRAFT = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, head_dim=32)
TRAIN = {"default": dict(steps=int(os.environ.get("GALE_TARGET_STEPS", 2000)), lr=1.5e-3, batch=96),
         "draft": dict(steps=int(os.environ.get("GALE_DRAFT_STEPS", 1600)), lr=3e-3, batch=96)}


# Pure-Python parts of widely used packages whose licences are permissive.
PERMISSIVE_PACKAGES = ["numpy", "torch", "transformers", "tokenizers", "sympy", "networkx", "scipy", "pandas",
                       "jinja2", "click", "requests", "urllib3", "packaging", "setuptools", "pip", "safetensors",
                       "huggingface_hub", "accelerate", "filelock", "fsspec", "sklearn", "matplotlib", "jax",
                       "triton", "onnx", "onnxscript", "torchvision", "torchaudio", "pytorch_lightning",
                       "lightning_fabric", "torchmetrics", "botorch", "gpytorch", "numpyro", "cupy", "tqdm",
                       "yaml", "regex", "psutil", "attr", "markupsafe", "idna", "certifi", "typing_extensions"]
PER_PACKAGE_BYTES = 6_000_000
TOTAL_EXTRA_BYTES = 60_000_000


def package_sources():
    """(name, licence, [(relpath, text)]) for each installed package of PERMISSIVE_PACKAGES."""
    import importlib.metadata as md
    import importlib.util
    out, total = [], 0
    for pkg in PERMISSIVE_PACKAGES:
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            continue
        root = list(spec.submodule_search_locations)[0]
        licence = "?"
        try:
            dist = md.packages_distributions().get(pkg, [pkg])[0]
            meta = md.metadata(dist)
            licence = meta.get("License-Expression") or meta.get("License") or ""
            if not licence or len(licence) > 80:
                cls = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License")]
                licence = ", ".join(cls) or licence[:80]
        except Exception:
            pass
        files, size = [], 0
        for d, dirs, names in sorted(os.walk(root)):
            dirs.sort()
            if "__pycache__" in d:
                continue
            for n in sorted(names):
                if not n.endswith(".py"):
                    continue
                try:
                    with open(os.path.join(d, n), encoding="utf-8") as fh:
                        text = fh.read()
                except (UnicodeDecodeError, OSError):
                    continue
                if len(text) > 400_000 or size + len(text) > PER_PACKAGE_BYTES:
                    continue
                files.append((pkg + "/" + os.path.relpath(os.path.join(d, n), root), text))
                size += len(text)
        if total + size > TOTAL_EXTRA_BYTES:
            break
        total += size
        out.append((pkg, licence, files))
    return out


def corpus():
    root = sysconfig.get_paths()["stdlib"]
    skip_parts = {"__pycache__", "site-packages", "dist-packages"}
    files = []
    for d, dirs, names in os.walk(root):
        rel = os.path.relpath(d, root)
        if any(p in skip_parts for p in rel.split(os.sep)):
            continue
        for n in sorted(names):
            if n.endswith(".py"):
                files.append(os.path.join(d, n))
    files.sort()
    docs = []
    for f in files:
        try:
            with open(f, encoding="utf-8") as fh:
                text = fh.read()
        except (UnicodeDecodeError, OSError):
            continue
        if len(text) > 400_000:  # generated tables, not code
            continue
        rel = os.path.relpath(f, root)
        docs.append((hashlib.sha256(rel.encode()).hexdigest(), rel, text))
    # Validation: files in hash order until 1.1 MB; the rest (in path order) is training data.
    docs.sort()
    val, val_bytes, val_names = [], 0, set()
    for _, rel, text in docs:
        if val_bytes >= 1_100_000:
            break
        val.append((rel, text))
        val_names.add(rel)
        val_bytes += len(text.encode())
    train = sorted((rel, text) for _, rel, text in docs if rel not in val_names)
    val.sort()
    packages = package_sources()
    for _, _, files in packages:
        train.extend(files)
    # dev: every 50th training file, held out for checkpoint selection.
    dev = train[::50]
    train = [f for i, f in enumerate(train) if i % 50]
    return root, train, val, dev, [(p, lic, len(f), sum(len(t) for _, t in f)) for p, lic, f in packages]


def train_tokenizer(texts):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=[EOT], min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def lr_at(step, total, peak):
    warm = 100
    if step < warm:
        return peak * (step + 1) / warm
    p = (step - warm) / max(1, total - warm)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def train_model(name, shape, ids, cfg_common, log, dev_ids):
    torch.manual_seed(SEED)
    cfg = LlamaConfig(**shape, **cfg_common)
    model = LlamaForCausalLM(cfg).cuda()
    n_params = sum(p.numel() for p in model.parameters())
    hp = TRAIN[name]
    opt = torch.optim.AdamW(model.parameters(), lr=hp["lr"], betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    data = torch.tensor(ids, dtype=torch.long, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(SEED)
    model.train()
    t0 = time.time()
    losses = []
    best = (float("inf"), -1, None)
    for step in range(hp["steps"]):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, hp["steps"], hp["lr"])
        starts = torch.randint(0, len(ids) - CTX - 1, (hp["batch"],), device="cuda", generator=gen)
        idx = starts[:, None] + torch.arange(CTX + 1, device="cuda")[None, :]
        batch = data[idx]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(input_ids=batch[:, :-1]).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 200 == 0 or step == hp["steps"] - 1:
            model.eval()
            dppl, _ = perplexity(model, dev_ids, CTX, CTX)  # held-out dev slice, never trained on
            model.train()
            dloss = math.log(dppl)
            if dloss < best[0]:
                best = (dloss, step, {k: v.detach().clone() for k, v in model.state_dict().items()})
            losses.append((step, round(loss.item(), 4), round(dloss, 4)))
            print(f"{name} step {step} loss {loss.item():.3f} dev {dloss:.3f} {time.time() - t0:.0f}s", flush=True)
    torch.cuda.synchronize()
    wall = time.time() - t0
    model.load_state_dict(best[2])
    log[name] = dict(parameters=n_params, steps=hp["steps"], batch=hp["batch"], ctx=CTX,
                     training_tokens=hp["steps"] * hp["batch"] * CTX, wall_seconds=round(wall, 1),
                     peak_lr=hp["lr"], losses_step_train_dev=losses, shape=shape, best_step=best[1],
                     best_dev_loss=round(best[0], 4))
    return model.eval()


@torch.no_grad()
def perplexity(model, ids, ctx, stride):
    """Sliding windows as in the Hugging Face perplexity guide (labels = inputs, earlier tokens masked)."""
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    seq = torch.tensor(ids, device="cuda")[None, :]
    for begin in range(0, seq.shape[1], stride):
        end = min(begin + ctx, seq.shape[1])
        trg_len = end - prev_end
        inp = seq[:, begin:end]
        tgt = inp.clone()
        tgt[:, :-trg_len] = -100
        out = model(inp, labels=tgt)
        n_valid = (tgt != -100).sum().item() - 1
        nll_sum += out.loss.double().item() * n_valid
        n_tokens += n_valid
        prev_end = end
        if end == seq.shape[1]:
            break
    return math.exp(nll_sum / n_tokens), n_tokens


def main():
    os.makedirs(OUT, exist_ok=True)
    root, train, val, dev, packages = corpus()
    train_text = [t for _, t in train]
    val_text = "\n\n".join(t for _, t in val)
    log = {"stdlib": root, "python": sys.version.split()[0], "torch": torch.__version__,
           "transformers": transformers.__version__, "train_files": len(train), "validation_files": len(val),
           "train_bytes": sum(len(t.encode()) for t in train_text), "validation_bytes": len(val_text.encode()),
           "validation_list": [r for r, _ in val], "gpu": torch.cuda.get_device_name(),
           "packages": [dict(name=p, licence=l, files=n, bytes=b) for p, l, n, b in packages],
           "dev_files": len(dev)}
    print(json.dumps({k: v for k, v in log.items() if k != "validation_list"}), flush=True)
    tok = train_tokenizer(train_text)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=None,
                                   model_max_length=1024)
    eot = tok.token_to_id(EOT)
    ids = []
    for t in train_text:
        ids.extend(tok.encode(t).ids)
        ids.append(eot)
    log["train_tokens_in_corpus"] = len(ids)
    cfg_common = dict(vocab_size=VOCAB, max_position_embeddings=1024, rms_norm_eps=1e-5, rope_theta=10000.0,
                      tie_word_embeddings=True, bos_token_id=eot, eos_token_id=eot, attention_bias=False)
    ddir = os.path.join(OUT, "data")
    os.makedirs(ddir, exist_ok=True)
    with open(os.path.join(ddir, "validation.txt"), "w", encoding="utf-8") as f:
        f.write(val_text)
    head = val_text[:24000]
    with open(os.path.join(ddir, "validation-head.txt"), "w", encoding="utf-8") as f:
        f.write(head)
    val_ids = fast(val_text)["input_ids"]
    dev_ids = fast("\n\n".join(t for _, t in dev))["input_ids"][:30000]
    head_ids = fast(head)["input_ids"]
    ref = {"validation_tokens": len(val_ids), "validation_head_tokens": len(head_ids), "models": {}}
    prompts = ["def fibonacci(n):", "import os\n\ndef ", "class Stack:\n    def __init__(self):",
               "# Return the sum of a list\ndef total(xs):"]
    for name, shape in (("default", TARGET), ("draft", DRAFT)):
        model = train_model(name, shape, ids, cfg_common, log, dev_ids)
        out_dir = os.path.join(OUT, name)
        model.to(torch.bfloat16)
        model.generation_config.eos_token_id = eot
        model.generation_config.bos_token_id = eot
        model.generation_config.pad_token_id = eot
        # Shards under 16 MB (and the index.json they come with) keep every file small.
        model.save_pretrained(out_dir, safe_serialization=True, max_shard_size="12MB")
        fast.save_pretrained(out_dir)
        # Reference figures from the saved files, in fp32 compute (what Gale's default f32 path does).
        m = LlamaForCausalLM.from_pretrained(out_dir, dtype=torch.float32).cuda().eval()
        r = {}
        r["validation_ppl_ctx512_stride256"], _ = perplexity(m, val_ids, 512, 256)
        r["validation_head_ppl_ctx128_stride64"], _ = perplexity(m, head_ids, 128, 64)
        r["validation_head_ppl_ctx512_stride256"], _ = perplexity(m, head_ids, 512, 256)
        r["greedy"] = []
        for p in prompts:
            pid = fast(p)["input_ids"]
            g = m.generate(torch.tensor([pid], device="cuda"), max_new_tokens=48, do_sample=False,
                           pad_token_id=eot)[0, len(pid):].tolist()
            r["greedy"].append({"prompt": p, "prompt_ids": pid, "ids": g, "text": fast.decode(g)})
        ref["models"][name] = r
        print(name, json.dumps({k: v for k, v in r.items() if k != "greedy"}), flush=True)
        print(r["greedy"][0]["prompt"] + r["greedy"][0]["text"], flush=True)
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)
    with open(os.path.join(OUT, "train_log.json"), "w") as f:
        json.dump(log, f, indent=1)


if __name__ == "__main__":
    main()
