"""make_goldens.py: writes test/goldens/<preset>-<dtype>.json from the PyTorch reference.

Usage: /usr/bin/python3 test/reference/make_goldens.py JOBS.json
(normally run by `npx tsx test/reference/make-goldens.ts`, which generates the models with
ensureModel, tokenizes the prompt and writes JOBS.json: a list of {preset, dtype, modelDir, spec,
sha256, promptText, promptTokenIds, outFile}).

Each golden holds: the generator spec and the model's sha256 (the golden is only valid for those
exact bytes), the prompt token ids, for every prompt position the logits of its top 16 tokens and
of 64 fixed vocabulary ids (0 .. vocab-1 evenly spaced, so the first and last rows of lm_head are
covered), the full-vocabulary argmax and its margin (top-1 minus top-2 logit), and 64 greedy
continuation tokens with their margins.

Tolerance (stored in each file as tolerance.logitAbs, in logit units): the engine, like the
reference, computes in float32 and rounds K and V to the model dtype; what differs is summation
order and exp/rsqrt implementations (~1e-7 relative), and, through them, the occasional K or V
element that lands on the other side of a bf16 rounding boundary: one bf16 ulp (2^-8 relative) in
that element. Those flips dominate: the bf16 rounding of the cache moves these tiny models' logits
by up to ~0.08 (std ~4), a single flipped K element by up to ~1e-2. To measure them, the reference
is rerun in float64 and 8 times in float32 with K and V nudged by 1e-6 relative noise just before
their rounding (10x a real reordering's error, so ~10x the flips of an engine run, in 8 runs);
the largest difference from the golden logits over all positions and the whole vocabulary is
`measuredMaxAbs`, and the bound is max(10 x measuredMaxAbs, 1e-4 x the logit std). A real bug
(a wrong RoPE band, a missing bias, an f32 instead of bf16 KV cache, an off-by-one in a block
table) moves logits by a sizeable fraction of their spread. Positions whose argmax margin
(top-1 minus top-2) is under 2 x the bound are not checked for argmax equality. All 64 greedy
tokens are checked (greedyCheckedSteps is always 64): the script refuses to write a golden with
any greedy step whose margin is under 2 x the bound (past such a near tie the engine could
legitimately take the other token), or whose continuation has fewer than 16 distinct tokens (a
repeated token says little about decoding); choose another seed or init in the preset then. The bound assumes float32 activations.

bf16 models also get `bf16MatmulInputs`: the engine's default CPU path (amx) rounds a
matmul's input x to bf16 (one term, |dx| <= 2^-9 |x| per element, as HF transformers in bf16
and llama.cpp's BF16 path do), which moves these models' logits by ~1e-2,
past the float32 bound. Rather than only widening that bound, the prompt's logits are recomputed
with reference_forward.py's round_matmul_x (x rounded to bf16 exactly where the engine's AMX
matmul rounds it), at each position's top-16 and fixed ids, and given their own tolerance,
measured as above with the x roundings nudged too (a real x lands on the other side of a bf16
boundary now and then, a 2^-8 change in that element; those flips dominate: measuredMaxAbs
~0.03-0.09 logit units, so this bound is ~0.3-0.9, ~10-25% of the logit std; the engine was
measured within 0.041). golden.test.ts holds the amx paths to these; the greedy tokens stay
those of the float32 reference and are checked on every path.
"""

import json
import sys

import torch

from reference_forward import Reference

NUM_TOP = 16
NUM_FIXED = 64
NUM_GREEDY = 64
MIN_DISTINCT_GREEDY = 16
TOLERANCE_FACTOR = 10.0
NUM_PERTURBED = 8
PERTURBATION = 1e-6  # relative; ~8 float32 ulps, more than a reordered float32 sum moves K or V
TOLERANCE_FLOOR_OF_SPREAD = 1e-4


def fixed_ids(vocab_size):
    return [round(i * (vocab_size - 1) / (NUM_FIXED - 1)) for i in range(NUM_FIXED)]


def rounded(values):
    return [float(f"{v:.7g}") for v in values]


def check_greedy(name, greedy, margins, bound):
    """Every greedy step must lead by at least 2 x the bound (so the engine cannot legitimately
    take another token at any of the NUM_GREEDY steps) and the continuation must be varied."""
    for step, margin in enumerate(margins):
        if margin < 2 * bound:
            raise SystemExit(
                f"{name}: greedy step {step} has margin {margin:.3g} < 2 x {bound}: "
                "choose another seed (or init) in the preset"
            )
    distinct = len(set(greedy))
    if distinct < MIN_DISTINCT_GREEDY:
        raise SystemExit(
            f"{name}: greedy continuation has {distinct} distinct tokens < {MIN_DISTINCT_GREEDY}: "
            "choose another seed (or init) in the preset"
        )
    return distinct


def position_records(logits, fixed):
    records = []
    for row in logits:
        top = torch.topk(row, NUM_TOP)
        records.append(
            {
                "argmax": int(top.indices[0]),
                "margin": rounded([top.values[0] - top.values[1]])[0],
                "topIds": [int(i) for i in top.indices],
                "topLogits": rounded(top.values.tolist()),
                "fixedLogits": rounded(row[fixed].tolist()),
            }
        )
    return records


class PerturbedReference(Reference):
    """The reference with K and V (and, with round_matmul_x, the matmul inputs the engine rounds
    to bf16) nudged by relative noise just before their rounding to the model dtype: a stand-in
    for another summation order, which moves some elements across a rounding boundary."""

    def __init__(self, model_dir, seed, round_matmul_x=False):
        super().__init__(model_dir, round_matmul_x=round_matmul_x)
        self.generator = torch.Generator().manual_seed(seed)

    def nudged(self, x):
        noise = torch.randn(x.shape, generator=self.generator, dtype=x.dtype)
        return x * (1 + PERTURBATION * noise)

    def round_to_cache(self, x):
        return super().round_to_cache(self.nudged(x))

    def round_x(self, x):
        return super().round_x(self.nudged(x))


def measure_tolerance(model_dir, tokens, logits32, round_matmul_x=False):
    runs = [Reference(model_dir, compute_dtype=torch.float64, round_matmul_x=round_matmul_x).logits(tokens)]
    runs += [PerturbedReference(model_dir, seed, round_matmul_x).logits(tokens) for seed in range(NUM_PERTURBED)]
    measured = max(float((logits32.double() - run.double()).abs().max()) for run in runs)
    spread = float(logits32.std())
    bound = max(TOLERANCE_FACTOR * measured, TOLERANCE_FLOOR_OF_SPREAD * spread)
    return {
        "logitAbs": float(f"{bound:.3g}"),
        "argmaxMinMargin": float(f"{2 * bound:.3g}"),
        "measuredMaxAbs": float(f"{measured:.3g}"),
        "logitStd": round(spread, 4),
        "basis": f"max({TOLERANCE_FACTOR:g} x the largest difference measured against float64 and "
        f"{NUM_PERTURBED} K/V-perturbed float32 runs, {TOLERANCE_FLOOR_OF_SPREAD:g} x logit std); "
        "float32 activations, K/V rounded to the model dtype (see test/reference/make_goldens.py)",
    }


def make_golden(job):
    tokens = job["promptTokenIds"]
    reference = Reference(job["modelDir"])
    logits = reference.logits(tokens)
    tolerance = measure_tolerance(job["modelDir"], tokens, logits)
    greedy, margins = reference.greedy(tokens, NUM_GREEDY)
    distinct = check_greedy(f"{job['preset']}-{job['dtype']}", greedy, margins, tolerance["logitAbs"])
    checked = len(greedy)
    fixed = fixed_ids(logits.shape[1])
    header = {
        "preset": job["preset"],
        "dtype": job["dtype"],
        "generator": job["spec"],
        "modelSha256": job["sha256"],
        "reference": "test/reference/reference_forward.py: float32, K/V rounded to the model dtype",
        "tolerance": tolerance,
        "promptText": job["promptText"],
        "promptTokenIds": tokens,
        "fixedIds": fixed,
        "greedyTokenIds": greedy,
        "greedyMargins": rounded(margins),
        "greedyCheckedSteps": checked,
        "greedyDistinctTokens": distinct,
    }
    if job["dtype"] == "bf16":
        # The engine's default amx path rounds a matmul's x to bf16: the same prompt through
        # the reference that does the same (reference_forward.py,
        # round_matmul_x), at the ids of each position's top 16 and the fixed ids, with its own
        # tolerance measured the same way. golden.test.ts uses these when the engine runs amx.
        rounded_ref = Reference(job["modelDir"], round_matmul_x=True)
        logits_rx = rounded_ref.logits(tokens)
        header["bf16MatmulInputs"] = {
            "reference": "reference_forward.py with round_matmul_x: matmul inputs rounded to bf16 "
            "where the engine's amx matmul rounds them (bf16 weights with in_features % 32 == 0)",
            "tolerance": measure_tolerance(job["modelDir"], tokens, logits_rx, round_matmul_x=True),
            "logits": [
                rounded(row[torch.cat((torch.topk(ref_row, NUM_TOP).indices, torch.tensor(fixed)))].tolist())
                for row, ref_row in zip(logits_rx, logits)
            ],
        }
    write_golden(job["outFile"], header, position_records(logits, fixed))
    print(
        f"{job['outFile']}: tolerance {tolerance['logitAbs']} (measured "
        f"{tolerance['measuredMaxAbs']}, logit std {tolerance['logitStd']}), "
        f"greedy tokens checked {checked}/{NUM_GREEDY}, {distinct} distinct, "
        f"smallest margin {min(margins):.3g}"
    )


def write_golden(path, header, positions):
    """JSON with one line per prompt position, so diffs of a golden stay readable."""
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in header.items()]
    body = ",\n".join(f"    {json.dumps(p)}" for p in positions)
    with open(path, "w") as f:
        f.write("{\n" + "\n".join(lines) + '\n  "positions": [\n' + body + "\n  ]\n}\n")


def main():
    with open(sys.argv[1]) as f:
        jobs = json.load(f)
    for job in jobs:
        make_golden(job)


if __name__ == "__main__":
    main()
