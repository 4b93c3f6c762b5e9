"""The cases of the accelerator benchmarks: one config variant each (sequence length,
attention kernel, PRNG, dropout) of `bert_base` in bfloat16. `accelerator.py` times them
on a device; `gpu_floor.py` compiles them for a GPU that is not here. No flags here, so
both can import it."""
from __future__ import annotations

import os

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


def case_config(smoke: bool, seq_len, batch, keep, attention, prng, attn_dropout, dropout):
  from tokendrop_jax import config_lib
  c = config_lib.load_file(os.path.join(ROOT, "configs", "tiny.py" if smoke else "bert_base.py"))
  c.model.update(attention=attention, attention_dropout_rate=attn_dropout, dropout_rate=dropout,
                 max_position=max(c.model.max_position, seq_len))
  c.model.dtype = "float32" if smoke else "bfloat16"
  c.data.update(seq_len=seq_len, global_batch_size=batch, num_shards=1,
                max_predictions_per_seq=max(1, round(0.15 * seq_len)))
  c.token_drop.update(strategy="loss_ema", keep_tokens=keep)
  c.train.prng_impl = prng
  return c
