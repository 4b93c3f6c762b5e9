"""Step-time benchmark: the full and the token-drop train step of one config, one run.

  python -m tokendrop_jax.benchmark --config=configs/bench_cpu.py --output=FILE.json

Times the jitted train step (forward + backward + AdamW + importance update) of
the full model and of the token-drop model on the same synthetic batch,
alternating the two so that machine noise hits both alike. Compile and warm-up
are excluded; the figure is the median step. The analytic FLOPs ratio comes
from `tokendrop_jax.flops`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import time
from typing import Any, Callable, Optional

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """Flags exist only when this module is the main: other scripts import run_benchmark."""
  config_flags.DEFINE_config_file("config", None, "Config file (configs/x.py[:variant]).")
  flags.DEFINE_string("output", None, "Where to write the JSON results.")
  flags.DEFINE_integer("steps", 10, "Timed steps per model (after warm-up).")
  flags.DEFINE_integer("warmup", 5, "Untimed steps per model after compiling.")
  flags.mark_flag_as_required("config")


def write_results(results, path: str, plot: Optional[Callable[[Any, str], None]] = None) -> None:
  """Writes `results` as JSON at `path` (making its folder) and, given `plot`,
  calls plot(results, PNG path beside it); prints where the JSON went."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(results, f, indent=2)
  if plot is not None:
    plot(results, os.path.splitext(path)[0] + ".png")
  print(f"wrote {path}")


def time_steps(steps_fn: dict, states: dict, batch, steps: int, warmup: int):
  """Times jitted `state, batch -> state, metrics` functions, interleaved.

  Returns ({name: [seconds per timed step]}, {name: compile + first step seconds}).
  Interleaving makes machine noise hit every function alike.
  """
  import jax
  compile_s = {}
  for name, fn in steps_fn.items():
    t0 = time.perf_counter()
    states[name], m = fn(states[name], batch)
    jax.block_until_ready(m)
    compile_s[name] = time.perf_counter() - t0
    for _ in range(warmup):
      states[name], m = fn(states[name], batch)
    jax.block_until_ready(m)
  times = {name: [] for name in steps_fn}
  for _ in range(steps):
    for name, fn in steps_fn.items():
      t0 = time.perf_counter()
      states[name], m = fn(states[name], batch)
      jax.block_until_ready(m)
      times[name].append(time.perf_counter() - t0)
  return times, compile_s


@dataclasses.dataclass(frozen=True)
class Setup:
  """What every step benchmark builds from a config: model, optimizer, one batch, init."""
  config: Any
  cfg: Any                   # BertConfig
  model: Any                 # BertForPretraining
  optimizer: Any
  schedule: Any
  batch: dict                # one synthetic MLM batch on device
  init: Callable             # rng -> a fresh train state (jitted)
  settings: Any              # DropSettings of the paper's drop step (loss_ema, keep_tokens)
  abstract: Any = None       # the train state's ShapeDtypeStructs (AOT compiles, no memory)

  def key(self, seed: int = 0):
    """The base key of a fresh state under the config's `train.prng_impl`."""
    from tokendrop_jax.training import state as state_lib
    return state_lib.base_key(seed, self.config.train.prng_impl)

  def jit_step(self, settings) -> Callable:
    """The jitted train step `state, batch -> state, metrics` for `settings`."""
    import jax
    from tokendrop_jax.training import step as step_lib
    return jax.jit(step_lib.make_train_step(self.model, self.optimizer, self.schedule, settings,
                                            prng_impl=self.config.train.prng_impl),
                   donate_argnums=0)

  def step_flops(self, keep_tokens=None, **kwargs) -> float:
    """Analytic FLOPs of one train step at this config's batch and sequence."""
    from tokendrop_jax import flops
    d = self.config.data
    return flops.train_step_flops(self.cfg, d.global_batch_size, d.seq_len,
                                  d.max_predictions_per_seq, keep_tokens, **kwargs)


def setup(config, strategy: str = "loss_ema") -> Setup:
  """Validates `config` and builds its benchmark pieces (see `Setup`) on one device."""
  import flax.linen as nn
  import jax

  from tokendrop_jax import config_checks, config_lib, importance, synthetic
  from tokendrop_jax.model.bert import BertForPretraining
  from tokendrop_jax.training import optim, sharding, state as state_lib, step_plan

  config_checks.validate(config)
  cfg = config_lib.model_config(config)
  data, td = config.data, config.token_drop
  model = BertForPretraining(cfg)
  optimizer, schedule = optim.make_optimizer(config.optim, config.train.num_steps)
  batch = jax.device_put(synthetic.mlm_batch(0, data.global_batch_size, data.seq_len,
                                             data.max_predictions_per_seq, cfg.vocab_size))
  # A constant start (no corpus counts here): the step's cost does not depend on the values.
  imp0 = importance.init_importance(importance.LOSS_EMA.name, cfg.vocab_size, ema_init=td.ema_init)
  init_fn = state_lib.make_state_init(model, optimizer, data.seq_len, data.max_predictions_per_seq)
  mesh = sharding.make_mesh(1, 1, 1, jax.devices()[:1])
  layout = state_lib.layout(init_fn, state_lib.base_key(0, config.train.prng_impl), imp0,
                            mesh=mesh, rules=sharding.DEFAULT_RULES)
  init = layout.jit_init(lambda rng: nn.unbox(init_fn(rng, imp0)))
  # The config's options (layer-wise, ScTD on every step, random ties) are timed too.
  kind = step_plan.StepKind(td.keep_tokens, consistency=td.consistency_weight > 0)
  settings = step_plan.drop_settings(config, kind, synthetic.SPECIAL_IDS, strategy=strategy)
  return Setup(config, cfg, model, optimizer, schedule, batch, init, settings, layout.abstract)


def run_benchmark(config, steps: int = 10, warmup: int = 5) -> dict:
  """Times both steps; returns the figures (see the module docstring)."""
  import jax

  from tokendrop_jax import importance

  td = config.token_drop
  # A config without dropping still benchmarks the paper's drop step against its full one.
  strategy = td.strategy if importance.get(td.strategy).drops else importance.LOSS_EMA.name
  bench = setup(config, strategy)
  cfg, data, batch = bench.cfg, config.data, bench.batch
  steps_fn = {"full": bench.jit_step(bench.settings.full()), "drop": bench.jit_step(bench.settings)}
  states = {name: bench.init(bench.key(0)) for name in steps_fn}
  times, compile_s = time_steps(steps_fn, states, batch, steps, warmup)
  full_s, drop_s = statistics.median(times["full"]), statistics.median(times["drop"])
  tokens = data.global_batch_size * data.seq_len
  full_flops, drop_flops = bench.step_flops(), bench.step_flops(td.keep_tokens)
  return {
      "config": config.name,
      "strategy": strategy,
      "batch_size": data.global_batch_size,
      "seq_len": data.seq_len,
      "keep_tokens": td.keep_tokens,
      "num_layers": cfg.num_layers,
      "hidden_size": cfg.hidden_size,
      "full_step_s": full_s,
      "drop_step_s": drop_s,
      "measured_ratio": drop_s / full_s,
      "flops_ratio": drop_flops / full_flops,
      "full_tokens_per_s": tokens / full_s,
      "drop_tokens_per_s": tokens / drop_s,
      "full_step_gflops": full_flops / 1e9,
      "drop_step_gflops": drop_flops / 1e9,
      "full_achieved_gflops_per_s": full_flops / full_s / 1e9,
      "drop_achieved_gflops_per_s": drop_flops / drop_s / 1e9,
      "full_step_times_s": times["full"],
      "drop_step_times_s": times["drop"],
      "compile_s": compile_s,
      "steps": steps,
      "warmup": warmup,
      "device": jax.devices()[0].device_kind,
      "num_devices": jax.device_count(),
      "jax_version": jax.__version__,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "host": platform.processor() or platform.machine(),
      "cpu_count": os.cpu_count(),
  }


def main(argv):
  del argv
  results = run_benchmark(FLAGS.config, FLAGS.steps, FLAGS.warmup)
  print(f"{results['config']}: full {results['full_step_s']:.3f} s/step, "
        f"drop {results['drop_step_s']:.3f} s/step, measured ratio {results['measured_ratio']:.3f}, "
        f"FLOPs ratio {results['flops_ratio']:.3f}; "
        f"{results['full_tokens_per_s']:.0f} vs {results['drop_tokens_per_s']:.0f} tokens/s")
  if FLAGS.output:
    write_results(results, FLAGS.output)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
