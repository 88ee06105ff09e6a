"""Writes a random-weight BF16 GGUF of synthetic:llama3-1b's or -8b's shape for llama.cpp, the
peer of tools/bench/llamacpp_peer.sh. The shapes are those of src/model/synthetic.cpp's table
(vocab, hidden, intermediate, layers, heads, kv heads, head dim, tied embeddings, rope theta):
keep the two in step.

Needs numpy (Debian: apt-get install python3-numpy) and llama.cpp's bundled gguf-py on
PYTHONPATH. The tokenizer is llama.cpp's "none" vocabulary with vocab_size dummy tokens:
llama-bench feeds random token ids and never tokenizes text.

Usage: peer_gguf.py {llama3-1b|llama3-8b} OUT.gguf
"""
import sys

import numpy as np
import gguf

# name: (vocab, hidden, intermediate, layers, heads, kv_heads, head_dim, tied, rope_theta)
SHAPES = {
    "llama3-1b": (128256, 2048, 8192, 16, 32, 8, 64, True, 500000.0),
    "llama3-8b": (128256, 4096, 14336, 32, 32, 8, 128, False, 500000.0),
}


def random_bf16(rows, cols, rng, std=0.02):
    """rows x cols bf16 bits (uint16) of N(0, std^2), viewed as bytes for gguf's raw BF16."""
    f = (rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(std)).view(np.uint32)
    return ((f >> 16).astype(np.uint16)).view(np.uint8)  # truncation: any bf16 will do


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in SHAPES:
        sys.exit(__doc__)
    name, out = sys.argv[1], sys.argv[2]
    vocab, hidden, inter, layers, heads, kv_heads, head_dim, tied, theta = SHAPES[name]
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(out, "llama")
    w.add_name("gale-peer-" + name)
    w.add_context_length(8192)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
    w.add_tokenizer_model("none")

    bf16 = gguf.GGMLQuantizationType.BF16
    ones = np.ones(hidden, dtype=np.float32)
    # One random array per matrix shape, written once per layer: the file holds every copy,
    # the writer keeps only these in memory (an 8B model's 16 GB would not fit twice).
    qkv = {n: random_bf16(r, hidden, rng) for n, r in
           (("q", heads * head_dim), ("k", kv_heads * head_dim), ("v", kv_heads * head_dim))}
    o = random_bf16(hidden, heads * head_dim, rng)
    gate, up = random_bf16(inter, hidden, rng), random_bf16(inter, hidden, rng)
    down = random_bf16(hidden, inter, rng)
    w.add_tensor("token_embd.weight", random_bf16(vocab, hidden, rng), raw_dtype=bf16)
    for i in range(layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", ones)
        for n in ("q", "k", "v"):
            w.add_tensor(p + f"attn_{n}.weight", qkv[n], raw_dtype=bf16)
        w.add_tensor(p + "attn_output.weight", o, raw_dtype=bf16)
        w.add_tensor(p + "ffn_norm.weight", ones)
        w.add_tensor(p + "ffn_gate.weight", gate, raw_dtype=bf16)
        w.add_tensor(p + "ffn_up.weight", up, raw_dtype=bf16)
        w.add_tensor(p + "ffn_down.weight", down, raw_dtype=bf16)
    w.add_tensor("output_norm.weight", ones)
    if not tied:
        w.add_tensor("output.weight", random_bf16(vocab, hidden, rng), raw_dtype=bf16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()


if __name__ == "__main__":
    main()
