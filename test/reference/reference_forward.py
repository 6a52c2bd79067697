"""reference_forward.py: an independent PyTorch forward pass for the Llama family.

Owns: reading a Hugging Face model directory (config.json + safetensors, single or sharded)
without `transformers` or `safetensors`, and the forward pass of LlamaForCausalLM,
MistralForCausalLM, Qwen2ForCausalLM and Qwen3ForCausalLM written plainly from their definitions
in transformers: RMSNorm, rotate_half RoPE (inv_freq of rope types default / linear / llama3 /
dynamic / yarn, yarn's attention factor on cos and sin), GQA by repeat_interleave of the KV
heads, causal softmax attention (Mistral's sliding window too), SiLU-gated MLP, tied
embeddings, q/k/v biases, Qwen3's per-head q/k RMSNorm (after the projections, before rope).
config.json in either transformers form: rope_theta + rope_scaling and torch_dtype
(transformers 4), or rope_parameters and dtype (transformers 5); when both are present they
must agree. Anything it does not implement (another architecture or rope type, a partial
rotary factor, soft-capping, ...) raises instead of computing something else.

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


# The keys each rope type may carry (besides rope_type / type, and rope_theta and
# partial_rotary_factor in rope_parameters); anything else is refused.
ROPE_KEYS = {
    "default": set(),
    "linear": {"factor"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
    "dynamic": {"factor", "original_max_position_embeddings"},
    "yarn": {"factor", "original_max_position_embeddings", "attention_factor", "beta_fast", "beta_slow",
             "mscale", "mscale_all_dim", "truncate"},
}


def rope_config(config):
    """(theta, rope dict with rope_type and its keys) from either config.json form.

    transformers 4: rope_theta (default 10000) + rope_scaling (null: the default rope; `type` is
    the older spelling of `rope_type`). transformers 5: one rope_parameters object holding
    rope_theta, rope_type and the type's keys. When both forms are present they must agree."""
    forms = []
    if "rope_theta" in config or config.get("rope_scaling") is not None:
        scaling = dict(config.get("rope_scaling") or {})
        forms.append(("rope_theta/rope_scaling", float(config.get("rope_theta", 10000.0)), scaling))
    if config.get("rope_parameters") is not None:
        params = dict(config["rope_parameters"])
        theta = float(params.pop("rope_theta", 10000.0))
        if params.pop("partial_rotary_factor", 1.0) != 1.0:
            raise ValueError("partial_rotary_factor != 1 is not implemented")
        forms.append(("rope_parameters", theta, params))
    if not forms:
        forms.append(("defaults", 10000.0, {}))
    normalized = []
    for name, theta, rope in forms:
        rope_type = rope.pop("rope_type", None)
        old_type = rope.pop("type", None)
        if rope_type is not None and old_type is not None and rope_type != old_type:
            raise ValueError(f"{name}: rope_type {rope_type!r} and type {old_type!r} disagree")
        rope_type = rope_type or old_type or "default"
        if rope_type not in ROPE_KEYS:
            raise ValueError(f"unsupported rope_type {rope_type}")
        unknown = set(rope) - ROPE_KEYS[rope_type]
        if unknown:
            raise ValueError(f"{name}: keys {sorted(unknown)} are not implemented for rope_type {rope_type}")
        normalized.append((name, theta, {"rope_type": rope_type, **rope}))
    (name, theta, rope) = normalized[0]
    for other_name, other_theta, other_rope in normalized[1:]:
        if other_theta != theta or other_rope != rope:
            raise ValueError(
                f"config.json: {name} (theta {theta}, {rope}) and {other_name} "
                f"(theta {other_theta}, {other_rope}) disagree"
            )
    return theta, rope


def default_inv_freq(base, dim):
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def yarn_get_mscale(scale, mscale=1):
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


class Rope:
    """inv_freq and the attention factor as transformers' modeling_rope_utils computes them
    (float32), for rope types default, linear, llama3, dynamic and yarn.

    dynamic (_compute_dynamic_ntk_parameters with dynamic_rope_update): inv_freq depends on the
    forward's length seq_len = max position + 1: past max_position_embeddings the base grows to
    base * (factor * seq_len / max_pos - (factor - 1)) ** (dim / (dim - 2)); within it the
    frequencies are the default ones (the engine never runs past it, so there the two agree).
    yarn (_compute_yarn_parameters): a ramp between interpolated (1 / factor) and extrapolated
    frequencies over the dimensions whose rotations within original_max_position_embeddings
    fall between beta_slow and beta_fast; the attention factor multiplies cos and sin. Presets
    give factor = max_position_embeddings / original_max_position_embeddings, where the
    transformers versions that derive factor from that ratio agree with those that read it."""

    def __init__(self, config, head_dim):
        if config.get("partial_rotary_factor", 1.0) != 1.0:
            raise ValueError("partial_rotary_factor != 1 is not implemented")
        self.base, self.scaling = rope_config(config)
        self.rope_type = self.scaling["rope_type"]
        self.dim = head_dim
        self.max_pos = config["max_position_embeddings"]
        self.attention_factor = 1.0
        if self.rope_type == "dynamic":
            original = self.scaling.get("original_max_position_embeddings", self.max_pos)
            if original != self.max_pos:
                raise ValueError("dynamic rope with original_max_position_embeddings != max_position_embeddings "
                                 "is not implemented")
        if self.rope_type == "yarn":
            self.attention_factor = self._yarn_attention_factor()

    def inv_freq(self, seq_len):
        base, dim, s = self.base, self.dim, self.scaling
        if self.rope_type == "default":
            return default_inv_freq(base, dim)
        if self.rope_type == "linear":
            return default_inv_freq(base, dim) / s["factor"]
        if self.rope_type == "llama3":
            return self._llama3(default_inv_freq(base, dim))
        if self.rope_type == "dynamic":
            if seq_len <= self.max_pos:
                return default_inv_freq(base, dim)
            factor = s["factor"]
            seq = torch.tensor(seq_len, dtype=torch.int64)
            grown = base * ((factor * seq / self.max_pos) - (factor - 1)) ** (dim / (dim - 2))
            return 1.0 / (grown ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        return self._yarn()

    def _llama3(self, inv_freq):
        s = self.scaling
        factor = s["factor"]
        low, high = s["low_freq_factor"], s["high_freq_factor"]
        old_len = s["original_max_position_embeddings"]
        low_freq_wavelen, high_freq_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
        return torch.where(is_medium, smoothed, scaled)

    def _yarn_attention_factor(self):
        s = self.scaling
        if s.get("attention_factor") is not None:
            return float(s["attention_factor"])
        factor, mscale, mscale_all_dim = s["factor"], s.get("mscale"), s.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            return float(yarn_get_mscale(factor, mscale) / yarn_get_mscale(factor, mscale_all_dim))
        return yarn_get_mscale(factor)

    def yarn_range(self):
        """(low, high): the ramp's ends in rotary pair indices, as find_correction_range."""
        s, dim, base = self.scaling, self.dim, self.base
        original = s.get("original_max_position_embeddings") or self.max_pos
        beta_fast = s.get("beta_fast") or 32
        beta_slow = s.get("beta_slow") or 1

        def find_correction_dim(num_rotations):
            return (dim * math.log(original / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

        low, high = find_correction_dim(beta_fast), find_correction_dim(beta_slow)
        if s.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        return max(low, 0), min(high, dim - 1)

    def _yarn(self):
        dim, base, factor = self.dim, self.base, self.scaling["factor"]
        pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
        inv_freq_extrapolation = 1.0 / pos_freqs
        inv_freq_interpolation = 1.0 / (factor * pos_freqs)
        low, high = self.yarn_range()
        if low == high:
            high += 0.001  # as transformers: no division by zero
        ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
        extrapolation_factor = 1 - ramp
        return (
            inv_freq_interpolation * (1 - extrapolation_factor)
            + inv_freq_extrapolation * extrapolation_factor
        )


ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}

# Keys that would change the numbers and are not implemented here: refused unless neutral.
NEUTRAL_ONLY = {
    "hidden_act": lambda v: v == "silu",
    "partial_rotary_factor": lambda v: v == 1,
    "attn_logit_softcapping": lambda v: v is None,
    "final_logit_softcapping": lambda v: v is None,
    "quantization_config": lambda v: v is None,
    "num_experts": lambda v: not v,
    "num_local_experts": lambda v: not v,
    "use_mrope": lambda v: not v,
    "query_pre_attn_scalar": lambda v: v is None,
    "attention_multiplier": lambda v: v is None,
    "embedding_multiplier": lambda v: v is None,
    "residual_multiplier": lambda v: v is None,
    "logits_scaling": lambda v: v is None,
    "attention_chunk_size": lambda v: v is None,
    "no_rope_layers": lambda v: not v,
}


def check_config(c):
    """Raises on a config this reference does not implement."""
    archs = c.get("architectures") or []
    if len(archs) != 1 or archs[0] not in ARCHITECTURES:
        raise ValueError(f"unsupported architectures {archs} (supported: {', '.join(ARCHITECTURES)})")
    if c.get("model_type") != ARCHITECTURES[archs[0]]:
        raise ValueError(f"model_type {c.get('model_type')!r} does not match {archs[0]}")
    for key, neutral in NEUTRAL_ONLY.items():
        if key in c and not neutral(c[key]):
            raise ValueError(f"config.json: {key} = {c[key]!r} is not implemented")
    if c["model_type"] == "qwen3" and c.get("attention_bias", False):
        raise ValueError("config.json: Qwen3 with attention_bias is not implemented")


def config_dtype(c):
    """The weights' dtype name: torch_dtype (transformers 4) or dtype (transformers 5), which
    must agree when both are present."""
    names = [c[k] for k in ("torch_dtype", "dtype") if c.get(k) is not None]
    if not names:
        raise ValueError("config.json: neither torch_dtype nor dtype")
    if len(set(names)) != 1:
        raise ValueError(f"config.json: torch_dtype {names[0]!r} and dtype {names[1]!r} disagree")
    if names[0] not in TORCH_DTYPES:
        raise ValueError(f"config.json: unsupported dtype {names[0]!r}")
    return names[0]


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Reference:
    def __init__(self, model_dir, round_kv=True, compute_dtype=torch.float32, round_matmul_x=False):
        with open(os.path.join(model_dir, "config.json")) as f:
            self.config = c = json.load(f)
        check_config(c)
        self.dtype = compute_dtype
        model_dtype = config_dtype(c)
        self.kv_dtype = TORCH_DTYPES[model_dtype] if round_kv else None
        self.w = {k: v.to(compute_dtype) for k, v in load_weights(model_dir).items()}
        self.num_layers = c["num_hidden_layers"]
        self.num_heads = c["num_attention_heads"]
        self.num_kv_heads = c.get("num_key_value_heads", self.num_heads)
        self.head_dim = c.get("head_dim") or c["hidden_size"] // self.num_heads
        self.eps = c["rms_norm_eps"]
        self.rope = Rope(c, self.head_dim)
        self.qk_norm = c["model_type"] == "qwen3"
        self.sliding_window = self._sliding_window(c)
        tied = c.get("tie_word_embeddings", False)
        self.lm_head = self.w["model.embed_tokens.weight" if tied else "lm_head.weight"]
        # round_matmul_x: model the engine's default CPU matmul (amx, native/kernels/cpu/cpu-amx.cc),
        # which multiplies a bf16 weight whose in_features are a multiple of 32 by x rounded to
        # bf16 once (round to nearest even; |dx| <= 2^-9 |x|), at any number of rows (every
        # other weight sees x itself, there and here).
        self.round_matmul_x = round_matmul_x and model_dtype == "bfloat16"

    @staticmethod
    def _sliding_window(c):
        if c["model_type"] == "mistral":
            return c.get("sliding_window")
        if c["model_type"] in ("qwen2", "qwen3") and c.get("use_sliding_window", False):
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
        if self.qk_norm:  # Qwen3: RMSNorm of every q and k head over head_dim, before rope
            q = self.rms_norm(q, self.w[p + ".q_norm.weight"])
            k = self.rms_norm(k, self.w[p + ".k_norm.weight"])
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
        inv_freq = self.rope.inv_freq(seq_len=len(tokens))
        freqs = (positions[:, None] * inv_freq[None, :]).to(self.dtype)  # [T, hd/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        # yarn's attention factor scales cos and sin, so q and k both (1 for the other types).
        cos, sin = emb.cos() * self.rope.attention_factor, emb.sin() * self.rope.attention_factor
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
