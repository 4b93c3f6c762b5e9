"""How far a train step is from its matmuls: the step's matmuls timed alone, against the step.

  .venv/bin/python benchmarks/matmul_floor.py --config=configs/bench_cpu.py [--peer] \
      --output=benchmarks/results/matmul_floor_bench_cpu.json

Lists every matrix product of one train step from the config's shapes (each
forward product and its two backward products: input gradient and weight
gradient), times each distinct product alone as one jitted `dot_general`, and
adds them up: the "matmul floor", what the step would take if everything else
(dropout, softmax, LayerNorm, GELU, residuals, AdamW, layout copies) were free.
The real steps are timed in the same process, interleaved, so the step/floor
ratio says how much of the step is not matmuls.

`--peer` adds Hugging Face's FlaxBertForMaskedLM step (`peer_flax_bert.py`),
whose MLM head computes logits at every position rather than at the masked
ones: its floor shows how much of the gap to it is FLOPs we do not compute.

The floor is not a strict bound: inside the step XLA may pick other layouts
for a product than it does alone, and it counts only matmul time. The sum of
its FLOPs equals `tokendrop_jax.flops.train_step_flops` (tested).
"""
from __future__ import annotations

import collections
import math
import os
import sys

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

_CONFIG = flags.DEFINE_string("config", "configs/bench_cpu.py", "configs/x.py[:variant]")
_PEER = flags.DEFINE_bool("peer", False, "Also the HF FlaxBertForMaskedLM step (transformers).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed train steps per contender.")
_WARMUP = flags.DEFINE_integer("warmup", 15, "Untimed train steps after compiling.")
_REPEATS = flags.DEFINE_integer("repeats", 15, "Timed calls per distinct matmul (median).")
_OUTPUT = flags.DEFINE_string("output", "", "JSON path (default: print only).")

# (lhs shape, rhs shape, ((lhs contracting, rhs contracting), (lhs batch, rhs batch)))
Matmul = tuple[tuple[int, ...], tuple[int, ...], tuple]


def dense(m: int, k: int, n: int) -> list[Matmul]:
  """y[m,n] = x[m,k] w[k,n], and its backward: dx = dy w^T, dw = x^T dy."""
  return [((m, k), (k, n), (((1,), (0,)), ((), ()))),
          ((m, n), (k, n), (((1,), (1,)), ((), ()))),
          ((m, k), (m, n), (((0,), (0,)), ((), ())))]


def batched(b: int, m: int, k: int, n: int) -> list[Matmul]:
  """y[b,m,n] = x[b,m,k] w[b,k,n] (attention's per-head products), and both gradients."""
  return [((b, m, k), (b, k, n), (((2,), (1,)), ((0,), (0,)))),
          ((b, m, n), (b, k, n), (((2,), (2,)), ((0,), (0,)))),
          ((b, m, k), (b, m, n), (((1,), (1,)), ((0,), (0,))))]


def layer_matmuls(cfg, batch: int, n_q: int, n_k: int) -> list[Matmul]:
  """One transformer layer where `n_q` rows attend to `n_k` rows, per sequence."""
  e, f, h, d = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.head_dim
  q, k = batch * n_q, batch * n_k
  return (dense(q, e, e) + 2 * dense(k, e, e)       # query; key and value
          + batched(batch * h, n_q, d, n_k)         # scores
          + batched(batch * h, n_q, n_k, d)         # probabilities . values
          + dense(q, e, e) + dense(q, e, f) + dense(q, f, e))  # output projection; FFN


def step_matmuls(cfg, batch: int, seq_len: int, head_positions: int,
                 keep_tokens: int | None = None) -> list[Matmul]:
  """Every matrix product of a train step, layer by layer as `flops.layer_rows` has them.

  `head_positions`: rows the MLM head runs on per sequence (our masked positions,
  or every position for a head like Hugging Face's)."""
  from tokendrop_jax import flops
  out = [mm for n_q, n_k in flops.layer_rows(cfg, seq_len, keep_tokens)
         for mm in layer_matmuls(cfg, batch, n_q, n_k)]
  m, e = batch * head_positions, cfg.hidden_size
  return out + dense(m, e, e) + dense(m, e, cfg.vocab_size)  # transform; tied decoder


def matmul_flops(mm: Matmul) -> int:
  """2 x batch x free(lhs) x free(rhs) x contracted."""
  lhs, rhs, ((lc, rc), (lb, rb)) = mm
  free = lambda shape, used: math.prod(n for i, n in enumerate(shape) if i not in used)  # noqa: E731
  return (2 * math.prod(lhs[i] for i in lb) * math.prod(lhs[i] for i in lc)
          * free(lhs, lc + lb) * free(rhs, rc + rb))


def time_matmuls(matmuls: list[Matmul], repeats: int) -> dict[Matmul, float]:
  """Median seconds of each distinct product, alone, as one jitted dot_general (after a
  compiling call). One product at a time: only its operands are in memory."""
  import jax
  import jax.numpy as jnp

  from tokendrop_jax import benchmark
  out = {}
  for mm in dict.fromkeys(matmuls):
    lhs, rhs, dims = mm
    fn = jax.jit(lambda a, b, dims=dims: jax.lax.dot_general(a, b, dims))
    a, b = jnp.ones(lhs, jnp.float32), jnp.ones(rhs, jnp.float32)
    out.update(benchmark.medians(benchmark.time_interleaved({mm: lambda: fn(a, b)}, repeats, 1)))
  return out


def floor(matmuls: list[Matmul], seconds: dict[Matmul, float]) -> dict:
  counts = collections.Counter(matmuls)
  total = sum(n * seconds[mm] for mm, n in counts.items())
  flop = sum(n * matmul_flops(mm) for mm, n in counts.items())
  return {"floor_s": total, "gflop": flop / 1e9, "gflop_per_s": flop / total / 1e9,
          "products": len(matmuls)}


def main(argv):
  del argv
  import jax

  from tokendrop_jax import benchmark, config_lib, flops
  path, _, variant = _CONFIG.value.partition(":")
  config = config_lib.load_file(os.path.join(ROOT, path), variant or None)
  bench = benchmark.setup(config)
  cfg, d, keep = bench.cfg, config.data, config.token_drop.keep_tokens
  b, s, p = d.global_batch_size, d.seq_len, d.max_predictions_per_seq
  plans = {"ours_full": step_matmuls(cfg, b, s, p), "ours_drop": step_matmuls(cfg, b, s, p, keep)}
  expected = {"ours_full": flops.train_step_flops(cfg, b, s, p),
              "ours_drop": flops.train_step_flops(cfg, b, s, p, keep)}
  fns, states = bench.contenders({"ours_full": bench.settings.full(), "ours_drop": bench.settings})
  if _PEER.value:
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import peer_flax_bert
    states["flax_bert_peer"], peer_step = peer_flax_bert.peer_step_fn(config)
    fns["flax_bert_peer"] = jax.jit(peer_step, donate_argnums=0)
    plans["flax_bert_peer"] = step_matmuls(cfg, b, s, s)
    expected["flax_bert_peer"] = flops.train_step_flops(cfg, b, s, s)
  seconds = time_matmuls([mm for plan in plans.values() for mm in plan], _REPEATS.value)
  times, _ = benchmark.time_steps(fns, states, bench.batch, _STEPS.value, _WARMUP.value)
  med = benchmark.medians(times)
  rows = {}
  for name, plan in plans.items():
    row = floor(plan, seconds)
    if abs(row["gflop"] * 1e9 - expected[name]) > 1e-6 * expected[name]:
      raise RuntimeError(f"{name}: the listed products make {row['gflop']:.3f} GFLOP, the "
                         f"FLOPs counter {expected[name] / 1e9:.3f}: the list is out of date")
    step = med[name]
    rows[name] = {**row, "step_s": step, "step_over_floor": step / row["floor_s"],
                  "not_matmul_s": step - row["floor_s"]}
    print(f"{name:>15}: step {step:.3f} s, matmuls alone {row['floor_s']:.3f} s "
          f"({row['gflop']:.1f} GFLOP at {row['gflop_per_s']:.0f} GFLOP/s), "
          f"step/floor {step / row['floor_s']:.2f}")
  products = [{"lhs": list(mm[0]), "rhs": list(mm[1]), "dims": str(mm[2]),
               "count": n, "s": seconds[mm], "gflop_per_s": matmul_flops(mm) / seconds[mm] / 1e9}
              for mm, n in collections.Counter(m for plan in plans.values() for m in plan).items()]
  results = {"config": config.name, "batch_size": b, "seq_len": s, "keep_tokens": keep,
             "steps": _STEPS.value, "warmup_steps": _WARMUP.value, "repeats": _REPEATS.value,
             "rows": rows, "products": products, "step_times_s": times}
  if _OUTPUT.value:
    benchmark.write_results(results, _OUTPUT.value)


if __name__ == "__main__":
  app.run(main)
