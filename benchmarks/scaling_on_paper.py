"""BERT-base/large at seq 512 on paper: FLOPs, expected speed-up, memory per device.

  .venv/bin/python benchmarks/scaling_on_paper.py \
      [--output=benchmarks/results/scaling_on_paper.json] [--configs=bert_base,bert_large]

No accelerator is needed. From the package's FLOPs counter: the expected
drop/full step-time ratio (the FLOPs ratio: a step that is matmul-bound scales
with FLOPs) and tokens/s on a TPU v4-8 and on 8xA100 at an *assumed* model-FLOPs
utilisation (`--assumed_mfu`, stated in the output; not a measurement). From
ahead-of-time compilation on 8 (fake CPU) devices with the config's mesh
(data parallel, 8 ways): XLA's per-device memory for the full and drop steps.
CPU compilation keeps the config's dtypes, but XLA:CPU may upcast bf16 work and
plans buffers differently from TPU/GPU: read these as estimates.
"""
from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import time  # noqa: E402

from absl import app, flags  # noqa: E402

_OUTPUT = flags.DEFINE_string("output", "benchmarks/results/scaling_on_paper.json", "JSON path.")
_CONFIGS = flags.DEFINE_list("configs", ["bert_base", "bert_large"], "Config names.")
_MFU = flags.DEFINE_float("assumed_mfu", 0.4, "Assumed MFU for the tokens/s estimate.")
_AOT = flags.DEFINE_bool("aot_memory", True, "Compile ahead of time for memory figures.")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Peak dense bf16 FLOP/s of the whole slice.
SYSTEMS = {"TPU v4-8 (4 chips)": 4 * 275e12, "8x A100": 8 * 312e12}


def _load(name):
  from tokendrop_jax import config_lib
  return config_lib.load_file(os.path.join(ROOT, "configs", f"{name}.py"), "loss_ema")


def memory(config) -> dict:
  """Per-device bytes of the jitted full and drop train steps (AOT, 8 devices)."""
  import flax.linen as nn
  import jax
  from tokendrop_jax import synthetic
  from tokendrop_jax.training import aot, loop

  run = loop.build(config, synthetic.SPECIAL_IDS)
  data = config.data
  batch = aot.abstract_batch(run.layout.mesh, data.global_batch_size, data.seq_len,
                             data.max_predictions_per_seq)
  out = {}
  # Under the logical-axis rules, as the training loop runs the step: without them the
  # activations' sharding constraints do nothing and XLA compiles another program.
  with jax.set_mesh(run.layout.mesh), nn.logical_axis_rules(run.layout.rules):
    for kind, fn in run.train_steps.items():  # the paper's configs: one full, one drop kind
      t0 = time.perf_counter()
      compiled = fn.lower(run.layout.abstract, batch).compile()
      stats = compiled.memory_analysis()
      name = "full" if kind.full else "drop"
      out[name] = {
          "compile_s": time.perf_counter() - t0,
          "argument_bytes": stats.argument_size_in_bytes,
          "output_bytes": stats.output_size_in_bytes,
          "temp_bytes": stats.temp_size_in_bytes,
          "alias_bytes": stats.alias_size_in_bytes,
          "peak_estimate_bytes": (stats.argument_size_in_bytes + stats.output_size_in_bytes
                                  + stats.temp_size_in_bytes - stats.alias_size_in_bytes),
      }
  return out


def main(argv):
  del argv
  import jax
  from tokendrop_jax import benchmark, config_lib, flops

  results = {"assumed_mfu": _MFU.value, "systems_peak_flops": SYSTEMS, "configs": {}}
  for name in _CONFIGS.value:
    config = _load(name)
    cfg = config_lib.model_config(config)
    d, k = config.data, config.token_drop.keep_tokens
    full = flops.train_step_flops(cfg, d.global_batch_size, d.seq_len, d.max_predictions_per_seq)
    drop = flops.train_step_flops(cfg, d.global_batch_size, d.seq_len, d.max_predictions_per_seq, k)
    tokens = d.global_batch_size * d.seq_len
    entry = {"batch": d.global_batch_size, "seq_len": d.seq_len, "keep_tokens": k,
             "full_step_tflops": full / 1e12, "drop_step_tflops": drop / 1e12,
             "expected_step_time_ratio": drop / full, "systems": {}}
    for system, peak in SYSTEMS.items():
      t_full, t_drop = full / (peak * _MFU.value), drop / (peak * _MFU.value)
      entry["systems"][system] = {
          "full_step_s": t_full, "drop_step_s": t_drop,
          "full_tokens_per_s": tokens / t_full, "drop_tokens_per_s": tokens / t_drop,
          "days_for_1M_steps_full": 1e6 * t_full / 86400,
          "days_for_1M_steps_drop": 1e6 * t_drop / 86400}
    if _AOT.value:
      entry["memory_per_device_8way_data_parallel"] = memory(config)
      config.model.remat = True  # per-layer rematerialisation: activations recomputed
      entry["memory_per_device_8way_data_parallel_remat"] = memory(config)
    results["configs"][name] = entry
    print(f"{name}: {full / 1e12:.1f} -> {drop / 1e12:.1f} TFLOP/step, expected ratio "
          f"{drop / full:.3f}", flush=True)
    for system, e in entry["systems"].items():
      print(f"  {system} at {_MFU.value:.0%} MFU: {e['full_tokens_per_s']:.0f} -> "
            f"{e['drop_tokens_per_s']:.0f} tokens/s; 1M steps {e['days_for_1M_steps_full']:.1f} -> "
            f"{e['days_for_1M_steps_drop']:.1f} days")
    for key, label in (("memory_per_device_8way_data_parallel", ""),
                       ("memory_per_device_8way_data_parallel_remat", ", remat")):
      for step, m in entry.get(key, {}).items():
        print(f"  {step} step per device{label}: {m['peak_estimate_bytes'] / 2**30:.2f} GiB "
              f"(temp {m['temp_bytes'] / 2**30:.2f} GiB)")
  results["device_used_for_aot"] = jax.devices()[0].device_kind
  benchmark.write_results(results, _OUTPUT.value)


if __name__ == "__main__":
  app.run(main)
