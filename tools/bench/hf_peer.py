"""Peer baseline for tools/gpu-bench.sh: Hugging Face transformers on synthetic:llama3-8b's shape
(random bf16 weights, Llama-3-8B config), same GPU, same figures as `gale bench`:
batch-1 greedy decode tok/s, time to first token of 512 tokens, 4096-token prefill TFLOP/s,
and offline throughput of one batch of 128-token prompts generating 128 tokens.
Prints one JSON object."""
import json
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

def sync_time(fn, reps=3):
    best = 1e30
    for _ in range(reps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best

def prefill_flops(n, H=4096, I=14336, L=32, qd=4096, kvd=1024, V=128256):
    per_token = 2 * (H * qd + 2 * H * kvd + qd * H + 3 * H * I)
    attn = sum(4.0 * (t + 1) * qd for t in range(n))
    return L * (per_token * n + attn) + 2 * H * V

def main():
    import transformers
    res = {"transformers": transformers.__version__, "torch": torch.__version__,
           "gpu": torch.cuda.get_device_name(0)}
    cfg = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=128, rope_theta=500000.0,
                      max_position_embeddings=8192, tie_word_embeddings=False, rms_norm_eps=1e-5)
    t = time.perf_counter()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg)
    model.eval()
    torch.cuda.synchronize()
    res["load_s"] = time.perf_counter() - t
    g = torch.Generator(device="cuda").manual_seed(0)
    ids = lambda b, n: torch.randint(2, cfg.vocab_size, (b, n), device="cuda", generator=g)
    with torch.inference_mode():
        p512, p4096 = ids(1, 512), ids(1, 4096)
        res["ttft512_s"] = sync_time(lambda: model(p512, use_cache=True, logits_to_keep=1))
        s = sync_time(lambda: model(p4096, use_cache=True, logits_to_keep=1))
        res["prefill4096_tflops"] = prefill_flops(4096) / s / 1e12
        p128 = ids(1, 128)
        gen = lambda n: model.generate(p128, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        t1 = sync_time(lambda: gen(1), reps=2)
        t257 = sync_time(lambda: gen(257), reps=2)
        res["decode_tokens_per_s"] = 256 / (t257 - t1)
        batch = ids(256, 128)
        tb = sync_time(lambda: model.generate(batch, max_new_tokens=128, min_new_tokens=128, do_sample=False,
                                              attention_mask=torch.ones_like(batch)), reps=1)
        res["tput128_output_tokens_per_s"] = 256 * 128 / tb
        res["tput128_note"] = "one batch of 256 requests (HF generate has no continuous batching)"
    print(json.dumps(res, indent=2))

if __name__ == "__main__":
    main()
