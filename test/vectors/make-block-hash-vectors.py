#!/usr/bin/python3
"""Writes test/vectors/block-hash.json: the chained block hash contract (DESIGN.md section 5).

    h_0 = xxh3_64(seed = 1337, bytes = le_u32(tokens[0 .. B)))
    h_i = xxh3_64(seed = 1337, bytes = le_u64(h_{i-1}) ++ le_u32(tokens[i*B .. (i+1)*B)))

An independent implementation (python-xxhash) that the engine (native/tests/test-kv-block-hash.cc)
and the router must both match. Deterministic: token sequences come from a fixed LCG, not from
`random`. Run: /usr/bin/python3 test/vectors/make-block-hash-vectors.py
"""
import json
import os
import struct

import xxhash

SEED = 1337
MAX_TOKEN = 2**31 - 1

FORMAT = (
    "cases: list of {name, block_size, tokens, hashes}. tokens: int32 token ids (0 .. 2^31-1). "
    "hashes: one per full block of tokens (a partial trailing block is not hashed), each the "
    "chained xxh3_64 (seed 1337) as 16 lowercase hex digits: h_0 = xxh3_64(le_u32(tokens[0..B))), "
    "h_i = xxh3_64(le_u64(h_{i-1}) ++ le_u32(tokens[i*B..(i+1)*B)))."
)


def chained_hashes(tokens, block_size):
    hashes = []
    for i in range(len(tokens) // block_size):
        block = tokens[i * block_size:(i + 1) * block_size]
        data = struct.pack("<%dI" % block_size, *block)
        if hashes:
            data = struct.pack("<Q", hashes[-1]) + data
        hashes.append(xxhash.xxh3_64_intdigest(data, seed=SEED))
    return hashes


def lcg_tokens(n, seed, modulus):
    """n tokens in [0, modulus) from a 64-bit LCG (Knuth's MMIX constants), high bits."""
    state, out = seed, []
    for _ in range(n):
        state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
        out.append((state >> 33) % modulus)
    return out


CASES = [
    ("empty input", 16, []),
    ("one token, block size 1", 1, [0]),
    ("block size 1 chain", 1, [1, 2, 3, 4, 5]),
    ("block size 4, two full blocks", 4, [1, 2, 3, 4, 5, 6, 7, 8]),
    ("block size 4, partial trailing block not hashed", 4, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
    ("shorter than one block: no hashes", 4, [1, 2, 3]),
    ("token ids 0 and 2^31-1", 4, [0, MAX_TOKEN, 0, MAX_TOKEN, MAX_TOKEN, MAX_TOKEN, 0, 0]),
    ("all zero tokens: the chain still differs per block", 4, [0] * 12),
    ("block size 16, llama-like ids", 16, lcg_tokens(40, 1, 128256)),
    ("block size 128", 128, lcg_tokens(300, 2, 152064)),
    ("2048 tokens, block size 16", 16, lcg_tokens(2048, 3, MAX_TOKEN + 1)),
    # Larger blocks reach XXH3's other length classes: block size 32 hashes 128 bytes (17-128)
    # then 136 (129-240); 64 hashes 256 then 264, and 256 and 1024 hash 1024/1032 and 4096/4104
    # bytes: the long path (> 240 bytes), its seed-derived secret, whole 1024-byte blocks and
    # the last stripe.
    ("block size 32: 128 then 136 bytes", 32, lcg_tokens(32 * 4 + 5, 4, 128256)),
    ("block size 64: 256 then 264 bytes", 64, lcg_tokens(64 * 3, 5, 152064)),
    ("block size 256: 1024 then 1032 bytes", 256, lcg_tokens(256 * 3 + 17, 6, MAX_TOKEN + 1)),
    ("block size 1024: 4096 then 4104 bytes", 1024, lcg_tokens(1024 * 3, 7, 128256)),
]


def main():
    cases = [
        {"name": name, "block_size": bs, "tokens": toks,
         "hashes": ["%016x" % h for h in chained_hashes(toks, bs)]}
        for name, bs, toks in CASES
    ]
    # One case per line: short diffs, and still plain JSON.
    lines = ['{', ' "format": %s,' % json.dumps(FORMAT), ' "seed": %d,' % SEED, ' "cases": [']
    lines += ["  " + json.dumps(c, separators=(",", ":")) + ("," if i + 1 < len(cases) else "")
              for i, c in enumerate(cases)]
    lines += [' ]', '}']
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "block-hash.json")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
