"""The cases of the accelerator benchmarks: one config variant each (sequence length,
attention kernel, PRNG, dropout) of `bert_base` in bfloat16. `accelerator.py` times them
on a device; `gpu_floor.py` compiles them for a GPU that is not here. No flags here, so
both can import it."""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (seq_len, global batch, keep_tokens, model.attention, train.prng_impl, attention
# dropout, hidden dropout). Ordered by what a short budget should reach first: the baseline,
# the fused kernel, then what the step costs besides its FLOPs (dropout's random bits, the PRNG).
CASES = {
    "s128_einsum": (128, 128, 64, "einsum", "threefry", 0.0, 0.1),
    "s128_cudnn": (128, 128, 64, "cudnn", "threefry", 0.0, 0.1),
    "s128_no_dropout": (128, 128, 64, "einsum", "threefry", 0.0, 0.0),
    "s128_einsum_rbg": (128, 128, 64, "einsum", "rbg", 0.0, 0.1),
    "s512_cudnn": (512, 32, 256, "cudnn", "threefry", 0.0, 0.1),
    "s512_einsum": (512, 32, 256, "einsum", "threefry", 0.0, 0.1),
    "s128_xla": (128, 128, 64, "xla", "threefry", 0.0, 0.1),
    "s128_recipe": (128, 128, 64, "einsum", "threefry", 0.1, 0.1),
    "s128_einsum_unsafe_rbg": (128, 128, 64, "einsum", "unsafe_rbg", 0.0, 0.1),
}
# The CPU smoke run: only what a CPU has.
SMOKE_CASES = {
    "s32_einsum": (32, 8, 16, "einsum", "threefry", 0.0, 0.1),
    "s32_xla": (32, 8, 16, "xla", "threefry", 0.0, 0.1),
    "s32_einsum_rbg": (32, 8, 16, "einsum", "rbg", 0.0, 0.1),
    "s32_no_dropout": (32, 8, 16, "einsum", "threefry", 0.0, 0.0),
    "s32_cudnn": (32, 8, 16, "cudnn", "threefry", 0.0, 0.1),  # refused on a CPU: recorded as such
}


def config_file(smoke: bool) -> str:
  return os.path.join(ROOT, "configs", "tiny.py" if smoke else "bert_base.py")


def case_fields(base, smoke: bool, seq_len, batch, keep, attention, prng, attn_dropout,
                dropout) -> dict:
  """{dotted config field: value}: what a case changes in `base`, its config file's config."""
  return {"model.attention": attention, "model.attention_dropout_rate": attn_dropout,
          "model.dropout_rate": dropout, "model.max_position": max(base.model.max_position,
                                                                   seq_len),
          "model.dtype": "float32" if smoke else "bfloat16", "data.seq_len": seq_len,
          "data.global_batch_size": batch, "data.num_shards": 1,
          "data.max_predictions_per_seq": max(1, round(0.15 * seq_len)),
          "token_drop.strategy": "loss_ema", "token_drop.keep_tokens": keep,
          "train.prng_impl": prng}


def case_config(smoke: bool, *case):
  """The config of a case (CASES / SMOKE_CASES value)."""
  from tokendrop_jax import config_lib
  c = config_lib.load_file(config_file(smoke))
  for field, value in case_fields(c, smoke, *case).items():
    section, name = field.split(".")
    c[section][name] = value
  return c


def fastest(results: dict) -> str | None:
  """The measured case of an accelerator.json whose full step was fastest per token."""
  measured = {n: c["full"]["step_s"] / (c["seq_len"] * c["batch_size"])
              for n, c in results["cases"].items() if "full" in c}
  return min(measured, key=measured.get) if measured else None


def main(argv: list[str]) -> int:
  """`accelerator_cases.py ACCELERATOR_JSON`: prints the flags that give profile_step.py
  the fastest measured case's config (nothing, status 1, if none was measured)."""
  import json

  from tokendrop_jax import config_lib
  with open(argv[1]) as f:
    results = json.load(f)
  name = fastest(results)
  if name is None:
    return 1
  smoke = results.get("smoke", False)
  case = (SMOKE_CASES if smoke else CASES)[name]
  fields = case_fields(config_lib.load_file(config_file(smoke)), smoke, *case)
  print(" ".join([f"--config={os.path.relpath(config_file(smoke), ROOT)}"] +
                 [f"--config.{k}={v}" for k, v in fields.items()]))
  return 0


if __name__ == "__main__":
  sys.path.insert(0, ROOT)
  sys.exit(main(sys.argv))
