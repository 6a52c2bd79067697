#!/usr/bin/env python3
"""gpu-reference.py: the Python half of the GPU check (scripts/gpu-check.sh), for a machine with
PyTorch and Hugging Face transformers but no Node and no network.

  make-models OUT      small generated models (HF layout: config.json + model.safetensors) for
                       test-cuda-forward: f32 and bf16 Llama (GQA 4, llama3 RoPE), a bf16 Qwen2
                       (q/k/v biases, tied embeddings, GQA 1, head_dim 128), a bf16 Qwen3
                       (per-head q/k norms, head_dim 128 on hidden 256, yarn rope) and a bf16
                       Mistral (sliding window 32, shorter than the test's sequences, GQA 8).
  make-8b OUT          a random-weight model with Llama-3.1-8B's shape in bf16 (16 GB), for the
                       benchmark; generated on the GPU, written as 4 safetensors shards.
  compare-hf DIR...    HF transformers (on the GPU, eager attention) against the logits that
                       test-cuda-forward wrote for each model: worst |ours - hf| / max(1, max|hf|)
                       and argmax agreement over every prompt position, for our CUDA and our CPU
                       runner. Bounds: f32 models 1e-3; bf16 models 5e-2 (HF rounds activations
                       to bf16 in its own places, and so do we).
  torch-bench DIR      PyTorch on the same GPU: HF generate (greedy, batch 1 and 32) ms/token,
                       and SDPA decode attention at batch 32, 4k context (bytes of K/V read per
                       second), as the same-run comparison for bench-cuda-engine.

Weights are scaled so greedy decisions are well separated (embedding N(0, 1), or N(0, 0.02)
when tied, with a final-norm gain of 8; linear layers N(0, 1/fan_in); lm_head x 4): CPU and GPU may then be compared token by token.
"""
import json
import os
import sys
import time

import torch

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}

TEST_MODELS = {
    "llama-gqa4-f32": dict(arch="LlamaForCausalLM", model_type="llama", dtype="float32", vocab=1024, hidden=256,
                           inter=512, layers=3, heads=4, kv_heads=1, head_dim=64, rope_scaling=LLAMA3_ROPE,
                           rope_theta=500000.0),
    "llama-gqa4-bf16": dict(arch="LlamaForCausalLM", model_type="llama", dtype="bfloat16", vocab=1024, hidden=256,
                            inter=512, layers=3, heads=4, kv_heads=1, head_dim=64, rope_scaling=LLAMA3_ROPE,
                            rope_theta=500000.0),
    "qwen2-bias-tied-bf16": dict(arch="Qwen2ForCausalLM", model_type="qwen2", dtype="bfloat16", vocab=1024, hidden=256,
                                 inter=640, layers=2, heads=2, kv_heads=2, head_dim=128, tie=True, qkv_bias=True,
                                 rope_theta=1e6),
    # Qwen3: per-head q/k norms, q twice as wide as the residual stream, yarn rope (all three
    # ramp regions at head_dim 128 over an original 64 positions; attention factor 0.1 ln 4 + 1).
    "qwen3-qknorm-yarn-bf16": dict(arch="Qwen3ForCausalLM", model_type="qwen3", dtype="bfloat16", vocab=1024,
                                   hidden=256, inter=512, layers=2, heads=4, kv_heads=2, head_dim=128, tie=True,
                                   qk_norm=True, rope_theta=1e6,
                                   rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                                 "original_max_position_embeddings": 64}),
    "mistral-window-bf16": dict(arch="MistralForCausalLM", model_type="mistral", dtype="bfloat16", vocab=1024,
                                hidden=256, inter=512, layers=2, heads=8, kv_heads=1, head_dim=64, sliding_window=32,
                                rope_theta=10000.0),
}

LLAMA_8B = dict(arch="LlamaForCausalLM", model_type="llama", dtype="bfloat16", vocab=128256, hidden=4096, inter=14336,
                layers=32, heads=32, kv_heads=8, head_dim=128, rope_theta=500000.0, max_pos=8192,
                rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                              "original_max_position_embeddings": 8192})


def config_json(s):
    c = {
        "architectures": [s["arch"]], "model_type": s["model_type"], "vocab_size": s["vocab"],
        "hidden_size": s["hidden"], "intermediate_size": s["inter"], "num_hidden_layers": s["layers"],
        "num_attention_heads": s["heads"], "num_key_value_heads": s["kv_heads"], "head_dim": s["head_dim"],
        "max_position_embeddings": s.get("max_pos", 512), "rms_norm_eps": 1e-5, "rope_theta": s["rope_theta"],
        "tie_word_embeddings": bool(s.get("tie")), "torch_dtype": s["dtype"], "bos_token_id": 1, "eos_token_id": 2,
        "hidden_act": "silu", "attention_dropout": 0.0, "initializer_range": 0.02,
    }
    if s["model_type"] == "llama":
        c["attention_bias"] = False
        c["mlp_bias"] = False
    if "rope_scaling" in s:
        c["rope_scaling"] = s["rope_scaling"]
    if s["model_type"] == "mistral":
        c["sliding_window"] = s["sliding_window"]
    if s["model_type"] in ("qwen2", "qwen3"):
        c["use_sliding_window"] = False
        c["sliding_window"] = None
    if s["model_type"] == "qwen3":
        c["attention_bias"] = False
    return c


def tensors(s, device, seed):
    """name -> tensor, HF names; generated on `device` (layer by layer for big models)."""
    g = torch.Generator(device=device).manual_seed(seed)
    dt = torch.float32 if s["dtype"] == "float32" else torch.bfloat16
    H, F, V, D = s["hidden"], s["inter"], s["vocab"], s["head_dim"]
    q, kv = s["heads"] * D, s["kv_heads"] * D

    def normal(shape, std):
        return (torch.randn(*shape, generator=g, device=device, dtype=torch.float32) * std).to(dt)

    # A tied table is also the lm_head: at std 1 the current token's own row would dominate its
    # logits (|e|^2 = hidden) and greedy decoding would repeat one token (std 0.3 still does).
    yield "model.embed_tokens.weight", normal((V, H), 0.02 if s.get("tie") else 1.0)
    for i in range(s["layers"]):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", (1.0 + normal((H,), 0.1).float()).to(dt)
        yield p + "post_attention_layernorm.weight", (1.0 + normal((H,), 0.1).float()).to(dt)
        yield p + "self_attn.q_proj.weight", normal((q, H), H ** -0.5)
        yield p + "self_attn.k_proj.weight", normal((kv, H), H ** -0.5)
        yield p + "self_attn.v_proj.weight", normal((kv, H), H ** -0.5)
        yield p + "self_attn.o_proj.weight", normal((H, q), q ** -0.5)
        if s.get("qkv_bias"):
            yield p + "self_attn.q_proj.bias", normal((q,), 0.05)
            yield p + "self_attn.k_proj.bias", normal((kv,), 0.05)
            yield p + "self_attn.v_proj.bias", normal((kv,), 0.05)
        if s.get("qk_norm"):
            yield p + "self_attn.q_norm.weight", (1.0 + normal((D,), 0.1).float()).to(dt)
            yield p + "self_attn.k_norm.weight", (1.0 + normal((D,), 0.1).float()).to(dt)
        yield p + "mlp.gate_proj.weight", normal((F, H), H ** -0.5)
        yield p + "mlp.up_proj.weight", normal((F, H), H ** -0.5)
        yield p + "mlp.down_proj.weight", normal((H, F), F ** -0.5)
    # Tied: the small table makes small logits; the final norm's gain brings them to the scale
    # of an untied model's (a uniform factor: the greedy path is the same).
    gain = 8.0 if s.get("tie") else 1.0
    yield "model.norm.weight", (gain * (1.0 + normal((H,), 0.1).float())).to(dt)
    if not s.get("tie"):
        yield "lm_head.weight", normal((V, H), 4.0 * H ** -0.5)


def save_file(named, path, metadata=None):
    """The safetensors format (8-byte little-endian header size, JSON header, raw data), written
    here so the script needs only torch."""
    header, blobs, offset = {}, [], 0
    kinds = {torch.float32: ("F32", torch.int32), torch.bfloat16: ("BF16", torch.int16), torch.float16: ("F16", torch.int16)}
    for name, t in named.items():
        kind, raw_type = kinds[t.dtype]
        data = t.contiguous().view(raw_type).numpy().tobytes()
        header[name] = {"dtype": kind, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for b in blobs:
            f.write(b)


def write_model(out, s, seed, shards=1, device="cpu"):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config_json(s), f, indent=2)
    if shards == 1:
        save_file({k: v.cpu().contiguous() for k, v in tensors(s, device, seed)}, os.path.join(out, "model.safetensors"),
                  metadata={"format": "pt"})
        return
    # Shards by layer ranges, with an index, as HF writes big models.
    per_shard = (s["layers"] + shards - 1) // shards
    parts = [dict() for _ in range(shards)]
    total = 0
    for k, v in tensors(s, device, seed):
        if k.startswith("model.layers."):
            i = min(int(k.split(".")[2]) // per_shard, shards - 1)
        else:
            i = 0 if k.startswith("model.embed_tokens") else shards - 1
        parts[i][k] = v.cpu().contiguous()
        total += v.numel() * v.element_size()
    names = {}
    for i, part in enumerate(parts):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file(part, os.path.join(out, fname), metadata={"format": "pt"})
        names.update({k: fname for k in part})
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": names}, f)


def make_models(out):
    for i, (name, s) in enumerate(TEST_MODELS.items()):
        write_model(os.path.join(out, name), s, seed=100 + i)
        print(f"made {os.path.join(out, name)}")


def make_8b(out):
    t0 = time.time()
    write_model(out, LLAMA_8B, seed=8, shards=4, device="cuda")
    print(f"made {out} (Llama-3.1-8B shape, bf16) in {time.time() - t0:.1f}s")


def load_hf(d, dtype):
    from transformers import AutoModelForCausalLM
    try:
        m = AutoModelForCausalLM.from_pretrained(d, dtype=dtype, attn_implementation="eager")
    except TypeError:
        m = AutoModelForCausalLM.from_pretrained(d, torch_dtype=dtype, attn_implementation="eager")
    return m.to("cuda").eval()


def compare_hf(dirs):
    ok = True
    for d in dirs:
        cfg = json.load(open(os.path.join(d, "config.json")))
        meta = json.load(open(os.path.join(d, "kvserve-prompt.json")))
        dtype = torch.float32 if cfg["torch_dtype"] == "float32" else torch.bfloat16
        bound = 1e-3 if dtype == torch.float32 else 5e-2
        model = load_hf(d, dtype)
        ids = torch.tensor([meta["prompt"]], device="cuda")
        with torch.no_grad():
            hf = model(ids).logits[0].float().cpu()
        n, V = hf.shape
        scale = hf.abs().amax(dim=1).clamp(min=1.0)
        line = [os.path.basename(d)]
        for side in ("cuda", "cpu"):
            ours = torch.from_numpy(
                __import__("numpy").fromfile(os.path.join(d, f"kvserve-{side}-logits.f32"), dtype="float32")).view(n, V)
            worst = ((ours - hf).abs().amax(dim=1) / scale).max().item()
            agree = (ours.argmax(dim=1) == hf.argmax(dim=1)).sum().item()
            good = worst <= bound
            ok &= good
            line.append(f"{side} vs HF worst {worst:.3g} (bound {bound:g}) argmax {agree}/{n}{'' if good else '  <-- FAIL'}")
        print("  " + "; ".join(line))
        del model
        torch.cuda.empty_cache()
    print("compare-hf: " + ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


def torch_bench(d):
    model = load_hf(d, torch.bfloat16)
    try:
        model.set_attn_implementation("sdpa")
    except Exception:
        pass
    V = model.config.vocab_size
    torch.manual_seed(0)
    for batch in (1, 32):
        ids = torch.randint(1, V, (batch, 128), device="cuda")
        mask = torch.ones_like(ids)

        def gen(n):
            torch.cuda.synchronize()
            t = time.time()
            with torch.no_grad():
                model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                               pad_token_id=0)
            torch.cuda.synchronize()
            return time.time() - t

        gen(4)  # warm-up
        t1, t2 = gen(1), gen(65)
        ms = (t2 - t1) / 64 * 1000
        print(f"  HF transformers generate (sdpa, bf16) batch {batch:2d}: {ms:.2f} ms/step, {batch * 1000 / ms:.1f} tok/s")
    # SDPA decode attention, batch 32, 4k context, Llama-3.1-8B heads (GQA expanded: SDPA reads 32 heads of K/V).
    B, H, Hkv, L, D = 32, 32, 8, 4096, 128
    q = torch.randn(B, H, 1, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(B, Hkv, L, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(B, Hkv, L, D, device="cuda", dtype=torch.bfloat16)
    f = torch.nn.functional.scaled_dot_product_attention
    try:
        f(q, k, v, enable_gqa=True)
        run = lambda: f(q, k, v, enable_gqa=True)
        how = "enable_gqa"
    except TypeError:
        ke, ve = k.repeat_interleave(H // Hkv, 1), v.repeat_interleave(H // Hkv, 1)
        run = lambda: f(q, ke, ve)
        how = "K/V expanded"
    for _ in range(3):
        run()
    torch.cuda.synchronize()
    t = time.time()
    for _ in range(20):
        run()
    torch.cuda.synchronize()
    us = (time.time() - t) / 20 * 1e6
    kv_bytes = 2 * B * Hkv * L * D * 2
    print(f"  torch SDPA decode attention ({how}) batch 32 ctx 4096: {us:.1f} us, {kv_bytes / us / 1e3:.0f} GB/s of K/V")
    return 0


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    cmd, args = sys.argv[1], sys.argv[2:]
    print(f"torch {torch.__version__}, cuda {torch.cuda.is_available()}")
    if cmd == "make-models":
        make_models(args[0])
        return 0
    if cmd == "make-8b":
        make_8b(args[0])
        return 0
    if cmd == "compare-hf":
        return compare_hf(args)
    if cmd == "torch-bench":
        return torch_bench(args[0])
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
