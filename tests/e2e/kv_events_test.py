#!/usr/bin/env python3
"""`gale serve --kv-events` end to end: a ZeroMQ SUB socket (pyzmq) reads what the server
publishes and decodes it with msgpack-python (an independent decoder), the way NVIDIA Dynamo's
ZMQ relay and vLLM's kv_events_subscriber.py read vLLM's events.

Two completions share a 32-token prefix (two 16-token blocks): the first one's BlockStored events
must name its prompt's blocks as a chain (first parent nil, then each block's parent the one
before), the second's must add only its own block, under the shared prefix's last block. Messages
are (topic, 8-byte big-endian sequence number, payload) with sequence numbers rising by one.

Usage: kv_events_test.py GALE_BINARY MODEL_DIR   (exit 77 = skipped: pyzmq or msgpack missing)
"""
import json
import socket
import struct
import subprocess
import sys
import time
import urllib.request

try:
    import msgpack
    import zmq
except ImportError as e:
    print(f"kv_events_test: skipped ({e}; Debian: python3-zmq python3-msgpack)")
    sys.exit(77)

BS = 16  # --block-size


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def post(url, body):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())


def main():
    gale, model = sys.argv[1], sys.argv[2]
    http_port, zmq_port = free_port(), free_port()
    base = f"http://127.0.0.1:{http_port}"
    server = subprocess.Popen(
        [gale, "serve", "-m", model, "--port", str(http_port), "--block-size", str(BS), "--speculative", "off",
         "--kv-events", f"tcp://127.0.0.1:{zmq_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    try:
        for _ in range(600):
            if server.poll() is not None:
                raise SystemExit("server exited at start-up:\n" + server.stderr.read().decode())
            try:
                urllib.request.urlopen(base + "/health", timeout=5)
                break
            except OSError:
                time.sleep(0.2)
        sub.connect(f"tcp://127.0.0.1:{zmq_port}")
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        messages = []  # (seq, events)

        def receive(timeout_ms):
            if not sub.poll(timeout_ms):
                return False
            frames = sub.recv_multipart()
            assert len(frames) == 3, f"expected topic, seq, payload; got {len(frames)} frames"
            assert frames[0] == b"", frames[0]
            assert len(frames[1]) == 8, frames[1]
            (seq,) = struct.unpack(">Q", frames[1])
            batch = msgpack.unpackb(frames[2], raw=False)
            assert isinstance(batch, list) and len(batch) == 3, batch
            ts, events, dp_rank = batch
            assert isinstance(ts, float) and abs(ts - time.time()) < 3600, ts
            assert dp_rank == 0, dp_rank
            messages.append((seq, events))
            return True

        # A PUB socket drops what it sends before a subscriber's connection is up ("slow joiner"):
        # send warm-up prompts (tokens of their own) until one's events arrive.
        for i in range(100):
            post(base + "/v1/completions", {"prompt": [7000 + i] + list(range(6000, 6000 + BS)), "max_tokens": 1})
            if receive(1000):
                break
        else:
            raise SystemExit("no KV event arrived")

        def stored_until(tokens_tail):
            """Reads until a BlockStored event holds tokens_tail's tokens; returns the Stored events read."""
            out = []
            for _ in range(10000):
                for _, events in messages[consumed[0]:]:
                    for e in events:
                        if e[0] == "BlockStored":
                            out.append(e)
                consumed[0] = len(messages)
                if any(e[3][-len(tokens_tail):] == tokens_tail for e in out):
                    return out
                if not receive(30000):
                    raise SystemExit(f"no BlockStored event with tokens {tokens_tail[:4]}...")
            raise SystemExit("too many messages")

        consumed = [len(messages)]
        prefix = list(range(100, 100 + 2 * BS))           # two full blocks, shared
        a = prefix + list(range(1000, 1000 + BS)) + [5]   # its own third block, then one more token
        b = prefix + list(range(2000, 2000 + BS)) + [5]
        post(base + "/v1/completions", {"prompt": a, "max_tokens": 1, "temperature": 0})
        sa = stored_until(a[2 * BS:3 * BS])
        rb = post(base + "/v1/completions", {"prompt": b, "max_tokens": 1, "temperature": 0})
        sb = stored_until(b[2 * BS:3 * BS])

        # Every Stored event: [tag, hashes, parent, tokens, block_size, lora_id, medium].
        blocks = {}  # hash -> (parent, tokens)
        for e in sa + sb:
            assert len(e) == 7, e
            tag, hashes, parent, tokens, block_size, lora_id, medium = e
            assert block_size == BS and lora_id is None and medium == "GPU", e
            assert len(tokens) == BS * len(hashes), e
            assert all(isinstance(h, int) and -2**63 <= h < 2**63 for h in hashes), hashes
            for j, h in enumerate(hashes):
                blocks[h] = (parent if j == 0 else hashes[j - 1], tokens[j * BS:(j + 1) * BS])

        def chain(prompt, n):
            """The hashes of prompt's first n blocks, following parents from a block without one."""
            out, parent = [], None
            for k in range(n):
                hits = [h for h, (p, t) in blocks.items() if p == parent and t == prompt[k * BS:(k + 1) * BS]]
                assert len(hits) == 1, f"block {k}: {len(hits)} stored blocks match"
                out.append(hits[0])
                parent = hits[0]
            return out

        ha = chain(a, 3)
        hb = chain(b, 3)
        assert ha[:2] == hb[:2] and ha[2] != hb[2], (ha, hb)
        # The second completion stored its own block only, under the shared prefix's last block.
        b_hashes = [h for e in sb for h in e[1]]
        assert hb[2] in b_hashes and ha[0] not in b_hashes and ha[1] not in b_hashes, (b_hashes, ha)
        own = next(e for e in sb if hb[2] in e[1])
        assert own[1][0] == hb[2] and own[2] == ha[1], own
        cached = rb["usage"].get("prompt_tokens_details", {}).get("cached_tokens")
        assert cached == 2 * BS, rb["usage"]

        seqs = [s for s, _ in messages]
        assert all(y == x + 1 for x, y in zip(seqs, seqs[1:])), seqs

        metrics = urllib.request.urlopen(base + "/metrics", timeout=30).read().decode()
        values = {l.split()[0]: float(l.split()[1]) for l in metrics.splitlines() if l.startswith("gale_kv_events")}
        assert values["gale_kv_events_sent_total"] >= sum(len(ev) for _, ev in messages), values
        assert values["gale_kv_events_dropped_total"] == 0, values
        print(f"kv_events_test: ok ({len(messages)} messages, sequence {seqs[0]}..{seqs[-1]}, "
              f"shared-prefix blocks {[h & 0xffff for h in ha]})")
    finally:
        sub.close(linger=0)
        ctx.term()
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    main()
