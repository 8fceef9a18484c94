#!/usr/bin/env python3
"""Helper of bench/bench_tokenizer.sh (benchmarks only; never used at run time or in CI).

  bench_tokenizer.py corpus OUT MB      write ~MB of documents (NUL-separated): the fixture corpus
                                        lines repeated, each repetition shuffled, with a counter
                                        mixed in so that not every word is a cache hit
  bench_tokenizer.py encode DIR CORPUS  `tokenizers` single-threaded encode of the same documents,
                                        one by one and with encode_batch; best of 3; one line each
"""
import json
import os
import random
import sys
import time


def corpus(out, mb):
    here = os.path.dirname(os.path.abspath(__file__))
    exp = os.path.join(here, "..", "tests", "fixtures", "tokenizers", "bytelevel_llama3", "expected.json")
    texts = [c["text"] for c in json.load(open(exp, encoding="utf-8"))["cases"] if c["text"]]
    rng = random.Random(0)
    docs, size, k = [], 0, 0
    while size < mb * 1e6:
        batch = texts[:]
        rng.shuffle(batch)
        for t in batch:
            d = f"{t} #{k} {rng.randrange(10**6)}"
            docs.append(d)
            size += len(d.encode()) + 1
            k += 1
    with open(out, "wb") as f:
        f.write(b"\0".join(d.encode() for d in docs))


def encode(tok_dir, path):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(tok_dir, "tokenizer.json"))
    raw = open(path, "rb").read()
    docs = [d.decode() for d in raw.split(b"\0")]
    for mode in ("one-by-one", "encode_batch"):
        best, n, checksum = 1e30, 0, 0
        for _ in range(3):
            tok = Tokenizer.from_file(os.path.join(tok_dir, "tokenizer.json"))  # cold cache
            t0 = time.perf_counter()
            if mode == "one-by-one":
                encs = [tok.encode(d, add_special_tokens=False) for d in docs]
            else:
                encs = tok.encode_batch(docs, add_special_tokens=False)
            dt = time.perf_counter() - t0
            best = min(best, dt)
        n = sum(len(e.ids) for e in encs)
        checksum = sum(sum(e.ids) for e in encs) % 2**32
        print(f"{mode} tokens {n} checksum {checksum} bytes {len(raw)} seconds {best:.4f} tokens_per_s {n / best:.0f}")


if __name__ == "__main__":
    if sys.argv[1] == "corpus":
        corpus(sys.argv[2], float(sys.argv[3]))
    else:
        encode(sys.argv[2], sys.argv[3])
