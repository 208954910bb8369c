#!/usr/bin/env python3
"""Build tiny random Qwen3 checkpoints with Hugging Face transformers and record float64 reference
outputs for them, so Cascade's forward pass can be checked against the library that defines Qwen3.

For every model below this writes OUT/<name>/:
  config.json, model.safetensors    from Qwen3ForCausalLM.save_pretrained (seeded random weights)
  reference.safetensors             logits_0, logits_1, logits_2: F32 [prompt_len, vocab], the
                                    float64 logits at every position of the three prompts
  reference.json                    prompts, 12-token greedy continuations (repeated float64 full
                                    forward, argmax) and the top-1 minus top-2 logit margin of every
                                    generated step, plus versions and the model's shape

The reference model is reloaded from the saved files and cast to float64, so BF16/F16 checkpoints
are checked with exactly the rounded weights the engine will read. Everything runs on the CPU with
the eager attention implementation; seeds make the output reproducible.

transformers computes RMSNorm, the attention softmax and the RoPE angles in float32 even in a
float64 model. To give a true float64 reference, those three are replaced (for the reference run
only) by the same formulas in float64; the script checks that the replacements were used and that
they agree with transformers' own mixed-precision output (the difference is recorded as
hf_mixed_precision_max_abs_diff in reference.json), so a mistake in them cannot go unnoticed.

Needs only torch, transformers (4.51+ or 5.x), safetensors and numpy. Usage:
  python scripts/make_reference_models.py [OUT_DIR]     (default tests/fixtures/models)
"""

import argparse
import inspect
import json
import os
import shutil
import sys

import types

import numpy as np
import torch
import transformers
import transformers.models.qwen3.modeling_qwen3 as modeling_qwen3
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import Qwen3Config, Qwen3ForCausalLM

PROMPT_LENGTHS = (5, 11, 23)
GREEDY_STEPS = 12
MAX_FILE_BYTES = 1 << 20

# Byte-level default tokenizer: 256 byte tokens, then <|endoftext|>=256, <|im_start|>=257,
# <|im_end|>=258. Qwen3 uses <|endoftext|> as bos and <|im_end|> as eos; we mirror that.
BOS_ID = 256
EOS_ID = 258

BASE = dict(hidden=64, heads=4, kv_heads=2, head_dim=16, vocab=272, intermediate=128, layers=2,
            tied=True, dtype="float32", theta=1_000_000.0, rope_linear_factor=None, eos=EOS_ID)

MODELS = {
    # Grouped-query attention: 2 query heads per kv head.
    "gqa": dict(),
    # Multi-query attention: one kv head for all 4 query heads.
    "mqa": dict(kv_heads=1, layers=3, intermediate=160),
    # Multi-head attention, the classic rope theta and an eos list.
    "mha": dict(kv_heads=4, theta=10_000.0, eos=[EOS_ID, BOS_ID]),
    # A separate lm_head instead of the tied embedding.
    "untied": dict(tied=False, intermediate=192),
    # A vocabulary size that is not a multiple of any tile.
    "odd_vocab": dict(vocab=317, layers=3),
    # Weights stored in bfloat16 (untied, so the lm_head is bf16 too).
    "bf16": dict(dtype="bfloat16", tied=False, layers=3),
    # head_dim (32) != hidden / heads (16): q_size 128 != hidden 64.
    "headdim": dict(head_dim=32, intermediate=160),
    # Weights stored in float16.
    "f16": dict(dtype="float16", layers=3, intermediate=192),
    # Linear RoPE scaling (factor 2), the one scaling type Cascade supports. Not in the lead's list:
    # skip it if the forward pass does not implement rope_scaling.
    "rope_linear": dict(rope_linear_factor=2.0, layers=2),
    # Shapes the CUDA backend takes (head_dim 64 and 128), for the GPU end-to-end tests.
    "gpu_hd64": dict(hidden=128, heads=2, kv_heads=1, head_dim=64, intermediate=128),
    "gpu_hd128": dict(hidden=128, heads=2, kv_heads=1, head_dim=128, intermediate=128, dtype="bfloat16"),
}

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


def transformers_major():
    return int(transformers.__version__.split(".")[0])


def make_config(spec):
    kwargs = dict(
        vocab_size=spec["vocab"],
        hidden_size=spec["hidden"],
        intermediate_size=spec["intermediate"],
        num_hidden_layers=spec["layers"],
        num_attention_heads=spec["heads"],
        num_key_value_heads=spec["kv_heads"],
        head_dim=spec["head_dim"],
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        tie_word_embeddings=spec["tied"],
        attention_bias=False,
        use_sliding_window=False,
        bos_token_id=BOS_ID,
        eos_token_id=spec["eos"],
    )
    factor = spec["rope_linear_factor"]
    if transformers_major() >= 5:
        rope = {"rope_type": "default", "rope_theta": spec["theta"]}
        if factor is not None:
            rope = {"rope_type": "linear", "rope_theta": spec["theta"], "factor": factor}
        kwargs["rope_parameters"] = rope
    else:
        kwargs["rope_theta"] = spec["theta"]
        kwargs["rope_scaling"] = None if factor is None else {"rope_type": "linear", "factor": factor}
    return Qwen3Config(**kwargs)


@torch.no_grad()
def randomize(model, spec, seed):
    """Re-initialises every parameter from one seeded generator so that activations and logits have
    O(1) spread (HF's default std 0.02 would make a 64-wide model's logits nearly flat, and all norm
    weights exactly 1, so a wrong or swapped norm weight would go unnoticed)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):  # tied lm_head appears once
        shape = p.shape
        if name.endswith("norm.weight"):
            value = 1.0 + 0.1 * torch.randn(shape, generator=gen, dtype=torch.float64)
        elif name.endswith(".bias"):
            value = 0.02 * torch.randn(shape, generator=gen, dtype=torch.float64)
        elif name.endswith("embed_tokens.weight") or name == "lm_head.weight":
            value = (2.0 / spec["hidden"] ** 0.5) * torch.randn(shape, generator=gen, dtype=torch.float64)
        else:  # Linear weight [out, in]
            value = (1.0 / shape[1] ** 0.5) * torch.randn(shape, generator=gen, dtype=torch.float64)
        p.copy_(value.to(p.dtype))
    if spec["tied"]:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "tying broken"


def save_checkpoint(model, out_dir):
    params = inspect.signature(model.save_pretrained).parameters
    kwargs = {"safe_serialization": True} if "safe_serialization" in params else {}  # 5.x: always
    model.save_pretrained(out_dir, **kwargs)
    for extra in ("generation_config.json",):  # not needed by the engine; keep fixtures small
        path = os.path.join(out_dir, extra)
        if os.path.exists(path):
            os.remove(path)


def load_reference(out_dir):
    kwargs = {"attn_implementation": "eager"}
    if transformers_major() >= 5:
        kwargs["dtype"] = torch.float64
    else:
        kwargs["torch_dtype"] = torch.float64
    model = Qwen3ForCausalLM.from_pretrained(out_dir, **kwargs)
    model = model.to(device="cpu", dtype=torch.float64).eval()
    return model


@torch.no_grad()
def check_loaded_weights(model, out_dir, spec):
    """The float64 model must hold exactly the (upcast) stored tensors: no re-initialised leftovers."""
    state = model.state_dict()
    path = os.path.join(out_dir, "model.safetensors")
    expected_dtype = SAFETENSORS_DTYPES[spec["dtype"]]
    with safe_open(path, framework="pt") as f:
        names = set(f.keys())
        for name in names:
            stored = f.get_tensor(name)
            assert stored.dtype == TORCH_DTYPES[spec["dtype"]], f"{name}: stored as {stored.dtype}, want {expected_dtype}"
            assert name in state, f"{path}: unexpected tensor {name}"
            assert torch.equal(state[name], stored.to(torch.float64)), f"{name}: reloaded weights differ"
    want = {k for k in state if not k.endswith("inv_freq")}
    if spec["tied"]:
        want.discard("lm_head.weight")
        assert torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"])
    missing = want - names
    assert not missing, f"{path}: tensors missing from the checkpoint: {sorted(missing)}"
    return sorted(names)


class Float64Patches:
    """Context manager: RMSNorm, eager attention softmax and RoPE in float64 for `model`."""

    def __init__(self, model):
        self.model = model
        self.calls = {"rms_norm": 0, "attention": 0, "rope": 0}
        self.saved_attention = None
        self.patched = []

    def __enter__(self):
        calls = self.calls
        cfg = self.model.config
        rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        assert rope_type in ("default", "linear"), rope_type
        theta = rope.get("rope_theta", getattr(cfg, "rope_theta", None))
        factor = float(rope.get("factor", 1.0)) if rope_type == "linear" else 1.0
        dim = cfg.head_dim
        inv_freq = 1.0 / (float(theta) ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)) / factor

        def rms_norm(self, hidden_states):
            calls["rms_norm"] += 1
            variance = hidden_states.pow(2).mean(-1, keepdim=True)
            return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))

        def rotary(self, x, position_ids):
            calls["rope"] += 1
            freqs = position_ids[..., None].to(torch.float64) * inv_freq.to(x.device)
            emb = torch.cat((freqs, freqs), dim=-1)
            return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)

        def attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
            calls["attention"] += 1
            key_states = modeling_qwen3.repeat_kv(key, module.num_key_value_groups)
            value_states = modeling_qwen3.repeat_kv(value, module.num_key_value_groups)
            weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
            if attention_mask is not None:
                mask = attention_mask[:, :, :, : key_states.shape[-2]]
                weights = weights.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else weights + mask
            weights = torch.softmax(weights, dim=-1)
            out = torch.matmul(weights, value_states).transpose(1, 2).contiguous()
            return out, weights

        for module in self.model.modules():
            name = type(module).__name__
            if name.endswith("RMSNorm"):
                module.forward = types.MethodType(rms_norm, module)
                self.patched.append(module)
            elif name.endswith("RotaryEmbedding"):
                hf = module.inv_freq.to(torch.float64)
                assert torch.allclose(hf, inv_freq, rtol=1e-6, atol=0), "RoPE inverse frequencies disagree"
                module.forward = types.MethodType(rotary, module)
                self.patched.append(module)
        self.saved_attention = modeling_qwen3.eager_attention_forward
        modeling_qwen3.eager_attention_forward = attention
        return self

    def __exit__(self, *exc):
        modeling_qwen3.eager_attention_forward = self.saved_attention
        for module in self.patched:
            del module.forward
        return False

    def all_used(self):
        return all(v > 0 for v in self.calls.values())


@torch.no_grad()
def full_logits(model, ids):
    out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    logits = out.logits[0]
    assert logits.dtype == torch.float64, logits.dtype
    return logits


@torch.no_grad()
def greedy(model, prompt, steps):
    ids = list(prompt)
    tokens, margins = [], []
    for _ in range(steps):
        last = full_logits(model, ids)[-1]
        top2 = torch.topk(last, 2)
        token = int(top2.indices[0])
        tokens.append(token)
        margins.append(float(top2.values[0] - top2.values[1]))
        ids.append(token)
    return tokens, margins


def build_one(name, spec, out_root, seed):
    out_dir = os.path.join(out_root, name)
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)

    torch.manual_seed(seed)
    config = make_config(spec)
    model = Qwen3ForCausalLM(config).eval()
    randomize(model, spec, seed)
    model = model.to(TORCH_DTYPES[spec["dtype"]])
    save_checkpoint(model, out_dir)
    del model

    for f in ("config.json", "model.safetensors"):
        path = os.path.join(out_dir, f)
        assert os.path.exists(path), f"save_pretrained did not write {path}"
    size = os.path.getsize(os.path.join(out_dir, "model.safetensors"))
    assert size < MAX_FILE_BYTES, f"{name}: model.safetensors is {size} bytes, over the fixture budget"

    ref = load_reference(out_dir)
    names = check_loaded_weights(ref, out_dir, spec)
    assert ref.config.head_dim == spec["head_dim"] and ref.config.num_key_value_heads == spec["kv_heads"]

    rng = np.random.default_rng(seed + 1)
    prompts = [[int(t) for t in rng.integers(0, spec["vocab"], size=n)] for n in PROMPT_LENGTHS]
    hf_mixed = [full_logits(ref, prompt) for prompt in prompts]  # transformers' own arithmetic
    tensors, continuations, all_margins, max_abs, mixed_diff = {}, [], [], 0.0, 0.0
    with Float64Patches(ref) as patches:
        for i, prompt in enumerate(prompts):
            logits = full_logits(ref, prompt)
            assert logits.shape == (len(prompt), spec["vocab"]), logits.shape
            assert torch.isfinite(logits).all()
            max_abs = max(max_abs, float(logits.abs().max()))
            mixed_diff = max(mixed_diff, float((logits - hf_mixed[i]).abs().max()))
            tensors[f"logits_{i}"] = logits.to(torch.float32).contiguous()
            tokens, margins = greedy(ref, prompt, GREEDY_STEPS)
            # The first greedy token must agree with the prompt's last-position logits.
            assert tokens[0] == int(torch.argmax(logits[-1]))
            continuations.append(tokens)
            all_margins.append(margins)
        precision = "float64 throughout (RMSNorm, softmax and RoPE patched to float64)"
        if not patches.all_used():
            # This transformers version routes around a patch: fall back to its own arithmetic.
            print(f"  warning: {name}: float64 patches not all used ({patches.calls}); "
                  "keeping transformers' mixed precision", file=sys.stderr)
            precision = "transformers mixed (float64 with float32 RMSNorm/softmax/RoPE)"
    if not patches.all_used():
        tensors = {f"logits_{i}": l.to(torch.float32).contiguous() for i, l in enumerate(hf_mixed)}
        max_abs = max(float(l.abs().max()) for l in hf_mixed)
        continuations, all_margins = [], []
        for prompt in prompts:
            tokens, margins = greedy(ref, prompt, GREEDY_STEPS)
            continuations.append(tokens)
            all_margins.append(margins)
    # float32 intermediates move logits by ~1e-6 relative; anything large means a broken patch.
    assert mixed_diff <= 1e-3 * max(1.0, max_abs), f"{name}: float64 patches disagree with transformers by {mixed_diff}"
    save_file(tensors, os.path.join(out_dir, "reference.safetensors"), metadata={"format": "pt"})

    reference = {
        "model": name,
        "seed": seed,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "computed_in": "cpu, attn_implementation=eager, use_cache=False",
        "precision": precision,
        "hf_mixed_precision_max_abs_diff": mixed_diff,
        "weights_dtype": SAFETENSORS_DTYPES[spec["dtype"]],
        "shape": {
            "vocab_size": spec["vocab"], "hidden_size": spec["hidden"],
            "intermediate_size": spec["intermediate"], "num_hidden_layers": spec["layers"],
            "num_attention_heads": spec["heads"], "num_key_value_heads": spec["kv_heads"],
            "head_dim": spec["head_dim"], "tie_word_embeddings": spec["tied"],
            "rope_theta": spec["theta"], "rope_linear_factor": spec["rope_linear_factor"],
        },
        "tensors": names,
        "logits_file": "reference.safetensors",
        "logits_tensors": [f"logits_{i}" for i in range(len(prompts))],
        "max_abs_logit": max_abs,
        "prompts": prompts,
        "greedy_steps": GREEDY_STEPS,
        "greedy": continuations,
        # greedy_margins[p][s]: top-1 minus top-2 logit before choosing greedy[p][s]. Steps with a
        # tiny margin may legitimately flip under float32/bf16 arithmetic; compare up to the first.
        "greedy_margins": all_margins,
        "min_greedy_margin": min(min(m) for m in all_margins),
    }
    with open(os.path.join(out_dir, "reference.json"), "w") as f:
        json.dump(reference, f, indent=1)
        f.write("\n")
    return reference, size


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", nargs="?", default=os.path.join("tests", "fixtures", "models"))
    parser.add_argument("--only", nargs="*", default=None, help="build only these models")
    parser.add_argument("--seed", type=int, default=20240601)
    args = parser.parse_args()

    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    names = args.only or list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        sys.exit(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    os.makedirs(args.out_dir, exist_ok=True)

    print(f"transformers {transformers.__version__}, torch {torch.__version__} -> {args.out_dir}")
    header = (f"{'model':<12} {'L':>2} {'hid':>4} {'H/KV':>5} {'hd':>3} {'vocab':>5} {'dtype':>5} {'tied':>5} "
              f"{'KB':>5} {'max|logit|':>10} {'min margin':>10} {'f32 diff':>9}")
    print(header)
    print("-" * len(header))
    for index, name in enumerate(names):
        spec = dict(BASE, **MODELS[name])
        ref, size = build_one(name, spec, args.out_dir, args.seed + 1000 * (list(MODELS).index(name) + 1))
        print(f"{name:<12} {spec['layers']:>2} {spec['hidden']:>4} {spec['heads']:>2}/{spec['kv_heads']:<2} "
              f"{spec['head_dim']:>3} {spec['vocab']:>5} {SAFETENSORS_DTYPES[spec['dtype']]:>5} "
              f"{str(spec['tied']):>5} {size // 1024:>5} {ref['max_abs_logit']:>10.3f} {ref['min_greedy_margin']:>10.2e} "
              f"{ref['hf_mixed_precision_max_abs_diff']:>9.1e}")
    print("done")


if __name__ == "__main__":
    main()
