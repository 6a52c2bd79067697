"""reference_forward.py: an independent PyTorch forward pass for the Llama family.

Owns: reading a Hugging Face model directory (config.json + safetensors, single or sharded)
without `transformers` or `safetensors`, and the forward pass of LlamaForCausalLM,
MistralForCausalLM and Qwen2ForCausalLM written plainly from their definitions in transformers:
RMSNorm, rotate_half RoPE (default / linear / llama3 inv_freq), GQA by repeat_interleave of the
KV heads, causal softmax attention (Mistral's sliding window too), SiLU-gated MLP, tied
embeddings, q/k/v biases.

Numerics: every weight is upcast to float32 (or float64, see `compute_dtype`) and all math runs
in that type. The engine keeps its KV cache in the model's dtype (bf16 for a bf16 model), so by
default (`round_kv=True`) K, after RoPE, and V are rounded to the model dtype before attention,
as the engine's cache does. Runs with /usr/bin/python3 (Debian's torch 1.13 and numpy).

API: Reference(model_dir).logits(tokens) -> [T, vocab] logits for every position;
Reference(model_dir).greedy(tokens, n) -> n greedy continuation tokens (full recompute per step).
"""

import json
import math
import os
import struct

import numpy as np
import torch

TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def read_safetensors(path):
    """Returns {name: float32 tensor} for one .safetensors file."""
    with open(path, "rb") as f:
        data = f.read()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    base = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = data[base + start : base + end]
        tensors[name] = torch.from_numpy(decode(raw, info["dtype"]).reshape(info["shape"]))
    return tensors


def decode(raw, dtype):
    if dtype == "BF16":
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).copy()
    if dtype == "F16":
        return np.frombuffer(raw, dtype="<f2").astype(np.float32)
    if dtype == "F32":
        return np.frombuffer(raw, dtype="<f4").copy()
    raise ValueError(f"unsupported safetensors dtype {dtype}")


def load_weights(model_dir):
    index_path = os.path.join(model_dir, "model.safetensors.index.json")
    if not os.path.exists(index_path):
        return read_safetensors(os.path.join(model_dir, "model.safetensors"))
    with open(index_path) as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
    weights = {}
    for name in files:
        weights.update(read_safetensors(os.path.join(model_dir, name)))
    return weights


def rope_inv_freq(config, head_dim):
    """inv_freq as transformers computes it (float32), with rope_scaling applied."""
    base = float(config.get("rope_theta", 10000.0))
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    scaling = config.get("rope_scaling") or {}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "linear":
        return inv_freq / scaling["factor"]
    if rope_type == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        low_freq_wavelen, high_freq_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
        return torch.where(is_medium, smoothed, scaled)
    if rope_type != "default":
        raise ValueError(f"unsupported rope_type {rope_type}")
    return inv_freq


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Reference:
    def __init__(self, model_dir, round_kv=True, compute_dtype=torch.float32, round_matmul_x=False):
        with open(os.path.join(model_dir, "config.json")) as f:
            self.config = c = json.load(f)
        self.dtype = compute_dtype
        self.kv_dtype = TORCH_DTYPES[c["torch_dtype"]] if round_kv else None
        self.w = {k: v.to(compute_dtype) for k, v in load_weights(model_dir).items()}
        self.num_layers = c["num_hidden_layers"]
        self.num_heads = c["num_attention_heads"]
        self.num_kv_heads = c.get("num_key_value_heads", self.num_heads)
        self.head_dim = c.get("head_dim") or c["hidden_size"] // self.num_heads
        self.eps = c["rms_norm_eps"]
        self.inv_freq = rope_inv_freq(c, self.head_dim)
        self.sliding_window = self._sliding_window(c)
        tied = c.get("tie_word_embeddings", False)
        self.lm_head = self.w["model.embed_tokens.weight" if tied else "lm_head.weight"]
        # round_matmul_x: model the engine's default CPU matmul (amx, native/kernels/cpu/cpu-amx.cc),
        # which multiplies a bf16 weight whose in_features are a multiple of 32 by x rounded to
        # bf16 once (round to nearest even; |dx| <= 2^-9 |x|), at any number of rows (every
        # other weight sees x itself, there and here).
        self.round_matmul_x = round_matmul_x and c["torch_dtype"] == "bfloat16"

    @staticmethod
    def _sliding_window(c):
        if c["model_type"] == "mistral":
            return c.get("sliding_window")
        if c["model_type"] == "qwen2" and c.get("use_sliding_window", False):
            return c.get("sliding_window")
        return None

    def rms_norm(self, x, weight):
        variance = x.pow(2).mean(-1, keepdim=True)
        return weight * (x * torch.rsqrt(variance + self.eps))

    def round_x(self, x):
        """x as the engine's one-term AMX matmul reads it: rounded to bf16."""
        return x.to(torch.bfloat16).to(self.dtype)

    def matmul(self, x, w):
        """x @ w.T, with x rounded where the engine's amx matmul rounds it (round_matmul_x)."""
        if not self.round_matmul_x or w.shape[1] % 32 != 0:
            return x @ w.T
        return self.round_x(x) @ w.T

    def linear(self, x, name):
        y = self.matmul(x, self.w[name + ".weight"])
        bias = self.w.get(name + ".bias")
        return y if bias is None else y + bias

    def round_to_cache(self, x):
        return x if self.kv_dtype is None else x.to(self.kv_dtype).to(self.dtype)

    def attention(self, x, layer, cos, sin):
        # x: [T, hidden]; q: [heads, T, hd]; k, v: [kv_heads, T, hd]
        p = f"model.layers.{layer}.self_attn"
        t = x.shape[0]
        q = self.linear(x, p + ".q_proj").view(t, self.num_heads, self.head_dim).transpose(0, 1)
        k = self.linear(x, p + ".k_proj").view(t, self.num_kv_heads, self.head_dim).transpose(0, 1)
        v = self.linear(x, p + ".v_proj").view(t, self.num_kv_heads, self.head_dim).transpose(0, 1)
        q = q * cos + rotate_half(q) * sin
        k = self.round_to_cache(k * cos + rotate_half(k) * sin)
        v = self.round_to_cache(v)
        group = self.num_heads // self.num_kv_heads
        k = k.repeat_interleave(group, dim=0)
        v = v.repeat_interleave(group, dim=0)
        scores = (q @ k.transpose(1, 2)) / math.sqrt(self.head_dim)  # [heads, T, T]
        scores = scores.masked_fill(~self.attention_mask(t), float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v  # [heads, T, hd]
        return self.linear(out.transpose(0, 1).reshape(t, -1), p + ".o_proj")

    def attention_mask(self, t):
        """[T, T] True where query i may attend key j: j <= i (and i - j < window)."""
        i = torch.arange(t)[:, None]
        j = torch.arange(t)[None, :]
        mask = j <= i
        if self.sliding_window is not None:
            mask &= (i - j) < self.sliding_window
        return mask

    def mlp(self, x, layer):
        p = f"model.layers.{layer}.mlp"
        gate = torch.nn.functional.silu(self.linear(x, p + ".gate_proj"))
        return self.linear(gate * self.linear(x, p + ".up_proj"), p + ".down_proj")

    def hidden_states(self, tokens):
        """Final normed hidden states [T, hidden] for a token sequence starting at position 0."""
        x = self.w["model.embed_tokens.weight"][torch.tensor(tokens, dtype=torch.long)]
        positions = torch.arange(len(tokens), dtype=torch.float32)
        freqs = (positions[:, None] * self.inv_freq[None, :]).to(self.dtype)  # [T, hd/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        for layer in range(self.num_layers):
            p = f"model.layers.{layer}"
            h = self.rms_norm(x, self.w[p + ".input_layernorm.weight"])
            x = x + self.attention(h, layer, cos, sin)
            h = self.rms_norm(x, self.w[p + ".post_attention_layernorm.weight"])
            x = x + self.mlp(h, layer)
        return self.rms_norm(x, self.w["model.norm.weight"])

    def logits(self, tokens):
        return self.matmul(self.hidden_states(tokens), self.lm_head)

    def greedy(self, tokens, n):
        """n greedy tokens after `tokens`, and each step's top-1 minus top-2 logit margin."""
        seq = list(tokens)
        out, margins = [], []
        for _ in range(n):
            last = self.hidden_states(seq)[-1] @ self.lm_head.T
            top = torch.topk(last, 2).values
            token = int(torch.argmax(last))
            out.append(token)
            margins.append(float(top[0] - top[1]))
            seq.append(token)
        return out, margins
