#!/usr/bin/env python3
"""Writes fuzz/corpus/gguf/tiny_llama.gguf: a tiny llama-architecture GGUF (v3) seed for the
`gguf` fuzz target, with F32, Q4_1 and Q8_0 tensors. Deterministic; no dependencies."""
import os
import struct

def s(x):
    b = x.encode()
    return struct.pack("<Q", len(b)) + b

def kv_u32(k, v):
    return s(k) + struct.pack("<I", 4) + struct.pack("<I", v)

def kv_f32(k, v):
    return s(k) + struct.pack("<I", 6) + struct.pack("<f", v)

def kv_str(k, v):
    return s(k) + struct.pack("<I", 8) + s(v)

meta = [
    kv_str("general.architecture", "llama"),
    kv_u32("llama.embedding_length", 64),
    kv_u32("llama.feed_forward_length", 64),
    kv_u32("llama.block_count", 1),
    kv_u32("llama.attention.head_count", 2),
    kv_u32("llama.attention.head_count_kv", 1),
    kv_u32("llama.context_length", 128),
    kv_f32("llama.rope.freq_base", 10000.0),
    kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5),
]
# (name, dims innermost first, type, bytes)
def q4_1(rows, cols):
    out = b""
    for i in range(rows * cols // 32):
        out += struct.pack("<e", 0.01 + 0.001 * (i % 5)) + struct.pack("<e", -0.05)
        out += bytes((7 * i + j) % 256 for j in range(16))
    return out

def q8_0(rows, cols):
    out = b""
    for i in range(rows * cols // 32):
        out += struct.pack("<e", 0.02) + bytes((3 * i + j) % 256 for j in range(32))
    return out

def f32(n):
    return b"".join(struct.pack("<f", ((i * 37) % 101) / 50.0 - 1.0) for i in range(n))

tensors = [
    ("token_embd.weight", [64, 16], 8, q8_0(16, 64)),
    ("blk.0.attn_q.weight", [64, 64], 3, q4_1(64, 64)),
    ("blk.0.attn_norm.weight", [64], 0, f32(64)),
    ("output.weight", [64, 16], 0, f32(16 * 64)),
]
header = b"GGUF" + struct.pack("<I", 3) + struct.pack("<Q", len(tensors)) + struct.pack("<Q", len(meta))
header += b"".join(meta)
offset = 0
infos = b""
data = b""
for name, dims, ty, raw in tensors:
    infos += s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
    infos += struct.pack("<I", ty) + struct.pack("<Q", offset)
    pad = (-len(raw)) % 32
    data += raw + b"\0" * pad
    offset += len(raw) + pad
body = header + infos
body += b"\0" * ((-len(body)) % 32)
path = os.path.join(os.path.dirname(__file__), "..", "corpus", "gguf", "tiny_llama.gguf")
with open(path, "wb") as f:
    f.write(body + data)
print(path, len(body + data), "bytes")
