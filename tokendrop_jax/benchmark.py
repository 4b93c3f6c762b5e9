"""The benchmark harness, and the step-time benchmark of one config built on it.

  python -m tokendrop_jax.benchmark --config=configs/bench_cpu.py --output=FILE.json

The harness is what every script in benchmarks/ is a short recipe on: `timed`
(one call's wall and CPU seconds), `time_interleaved` (thunks called in turn after
a warm-up, so that a shared machine's drift hits them alike) and `time_steps` (the
same for jitted train steps, `step_thunks`), `medians`/`ratios`, `setup` (model,
optimizer, one synthetic batch and fresh states of a config), `write_results` (the
JSON, with the run's `environment()`, and a PNG by the script's plot) and
`read_results` (the JSON so far, for a script that merges into it).

The step benchmark times the jitted train step (forward + backward + AdamW +
importance update) of the full model and of the token-drop model on the same
synthetic batch, alternating the two. Compile and warm-up are excluded; the
figure is the median step. The analytic FLOPs ratio comes from
`tokendrop_jax.flops`.
"""
from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, NamedTuple, Optional

from absl import app, flags
from ml_collections import config_flags

from tokendrop_jax import accelerator, files

FLAGS = flags.FLAGS
# The packages whose versions `environment()` records (those installed).
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "libtpu", "jax-cuda12-plugin")


def _define_flags() -> None:
  """Flags exist only when this module is the main: other scripts import run_benchmark."""
  config_flags.DEFINE_config_file("config", None, "Config file (configs/x.py[:variant]).")
  flags.DEFINE_string("output", None, "Where to write the JSON results.")
  flags.DEFINE_integer("steps", 10, "Timed steps per model (after warm-up).")
  flags.DEFINE_integer("warmup", 5, "Untimed steps per model after compiling.")
  flags.mark_flag_as_required("config")


# ---------------------------------------------------------------------------
# Where a result was measured.


def code_version(top: str | None = None) -> str:
  """The commit of the tokendrop_jax this process runs ('+dirty': with uncommitted
  changes), or the COMMIT file beside a copy made with `git archive` (never read in a
  git checkout, where it could only be stale)."""
  top = top or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  if not os.path.exists(os.path.join(top, ".git")):
    if os.path.exists(os.path.join(top, "COMMIT")):
      with open(os.path.join(top, "COMMIT")) as f:
        return f.read().strip()
    return "unknown"
  try:
    git = lambda *a: subprocess.run(["git", "-C", top, *a], capture_output=True, text=True,  # noqa: E731
                                    check=True).stdout.strip()
    return git("rev-parse", "HEAD") + ("+dirty" if git("status", "--porcelain", "tokendrop_jax")
                                       else "")
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def _cpu_name() -> str:
  """The host CPU's model name (Linux), else what `platform` knows of it."""
  try:
    with open("/proc/cpuinfo") as f:
      return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor() or platform.machine()


def environment() -> dict:
  """What a figure was measured with, so that it is compared only with its peers: the
  devices, the package versions, XLA's flags, the host, the code's commit, the command."""
  import jax
  versions = accelerator.versions(PACKAGES)
  return {"device": jax.devices()[0].device_kind, "num_devices": jax.device_count(),
          "platform": jax.default_backend(),
          "versions": {p: v for p, v in versions.items() if v is not None},
          "python": platform.python_version(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "host_cpu": _cpu_name(), "cpu_count": os.cpu_count(), "commit": code_version(),
          "command": " ".join(sys.argv)}


# ---------------------------------------------------------------------------
# Timing.


class Timing(NamedTuple):
  value: Any     # what the call returned
  wall_s: float
  cpu_s: float   # this process's CPU time, all threads: what other jobs on the cores do not add


def timed(thunk: Callable[[], Any]) -> Timing:
  """Calls `thunk()` once and waits for JAX's asynchronous results, so they are in its time."""
  import jax
  t0, c0 = time.perf_counter(), time.process_time()
  value = jax.block_until_ready(thunk())
  return Timing(value, time.perf_counter() - t0, time.process_time() - c0)


def time_interleaved(thunks: dict, repeats: int, warmup: int = 0) -> dict[Any, list[float]]:
  """{name: wall seconds of each of `repeats` calls of thunks[name]}, after `warmup`
  untimed calls of each. The calls go round the names, one of each per round, so that a
  drift of a shared machine hits every name alike."""
  for _ in range(warmup):
    for thunk in thunks.values():
      timed(thunk)
  times = {name: [] for name in thunks}
  for _ in range(repeats):
    for name, thunk in thunks.items():
      times[name].append(timed(thunk).wall_s)
  return times


def time_pipelined(thunks: dict, steps: int, rounds: int = 3) -> dict[Any, list[float]]:
  """{name: seconds per call over each of `rounds` runs of `steps` calls of thunks[name]
  back to back}, waiting only after the last call of a run. A training loop dispatches
  its steps this way: the host prepares the next step while the device runs this one,
  so what `time_interleaved` adds per call (dispatch, the wait) is hidden unless the
  host is the slower of the two."""
  import jax
  times = {name: [] for name in thunks}
  for _ in range(rounds):
    for name, thunk in thunks.items():
      t0 = time.perf_counter()
      for _ in range(steps - 1):
        thunk()
      jax.block_until_ready(thunk())
      times[name].append((time.perf_counter() - t0) / steps)
  return times


def step_thunks(steps_fn: dict, states: dict, batch) -> dict:
  """{name: a thunk taking one step of jitted `state, batch -> state, metrics`
  steps_fn[name] from states[name] (which it updates), returning the metrics}."""
  def step(name):
    def call():
      states[name], metrics = steps_fn[name](states[name], batch)
      return metrics
    return call
  return {name: step(name) for name in steps_fn}


def time_steps(steps_fn: dict, states: dict, batch, steps: int, warmup: int):
  """Times jitted train steps (`step_thunks`) with `time_interleaved`.

  Returns ({name: [seconds per timed step]}, {name: compile + first step seconds});
  `states` ends holding each function's last state.
  """
  thunks = step_thunks(steps_fn, states, batch)
  first_s = {name: timed(thunk).wall_s for name, thunk in thunks.items()}
  return time_interleaved(thunks, steps, warmup), first_s


def medians(times: dict) -> dict:
  """{name: median of its times}: the figure every timing here reports (robust to a hiccup)."""
  return {name: statistics.median(t) for name, t in times.items()}


def ratios(values: dict, base) -> dict:
  """{name: value / values[base]}."""
  return {name: v / values[base] for name, v in values.items()}


# ---------------------------------------------------------------------------
# Results.


def read_results(path: str) -> Optional[dict]:
  """The JSON at `path`, or None if there is none (a merging script's start)."""
  return files.read_json(path) if files.exists(path) else None


def write_results(results: dict, path: str,
                  plot: Optional[Callable[[Any, str], None]] = None) -> dict:
  """Writes `results` plus `environment` (this run's `environment()`) as JSON at `path`,
  and given `plot`, calls plot(that, PNG path beside it); returns what it wrote.

  The folder is made; the file is replaced whole (written beside, then renamed), so a run
  stopped while writing leaves the previous JSON."""
  out = {**results, "environment": environment()}
  files.write_json(path, out)
  if plot is not None:
    plot(out, os.path.splitext(path)[0] + ".png")
  print(f"wrote {path}", flush=True)
  return out


# ---------------------------------------------------------------------------
# Step benchmarks.


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

  def kinds(self) -> dict:
    """{"full": the full step's settings, "drop": the paper's drop step's}."""
    return {"full": self.settings.full(), "drop": self.settings}

  def contenders(self, settings: dict) -> tuple[dict, dict]:
    """({name: jitted step}, {name: a fresh state}) of `settings` {name: DropSettings}:
    what `time_steps` takes."""
    return ({name: self.jit_step(s) for name, s in settings.items()},
            {name: self.init(self.key(0)) for name in settings})

  def time(self, settings: dict, steps: int, warmup: int):
    """`time_steps` of `settings` {name: DropSettings} on this batch, from fresh states."""
    return time_steps(*self.contenders(settings), self.batch, steps, warmup)

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
  from tokendrop_jax import importance

  td = config.token_drop
  # A config without dropping still benchmarks the paper's drop step against its full one.
  strategy = td.strategy if importance.get(td.strategy).drops else importance.LOSS_EMA.name
  bench = setup(config, strategy)
  cfg, data = bench.cfg, config.data
  times, compile_s = bench.time(bench.kinds(), steps, warmup)
  med = medians(times)
  full_s, drop_s = med["full"], med["drop"]
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
