"""The train step as a GPU would run it, compiled here without one: its kernels, their
bytes and FLOPs, and the least time the GPU could take (the roofline floor).

  make install ACCEL=cuda VENV=.venv-cuda      # jax's CUDA plugin; no GPU needed
  .venv-cuda/bin/python benchmarks/gpu_floor.py --gpu=h100 \
      [--cases=s128_einsum,s128_cudnn] [--output=benchmarks/results/gpu_floor_h100.json]

XLA's GPU compiler runs without a device when it is given the device's description
(SMs, memory, bandwidth, compute capability: `target_config`), which jax hands to the
CUDA plugin as a compile-only topology. The full and the drop step of each case of
`accelerator_cases` are compiled for it, and the optimized program is read back
(`tokendrop_jax.training.kernels`): every kernel, its bytes read and written, its matmul
FLOPs, and its floor max(FLOPs / peak bf16, bytes / memory bandwidth). Summed, the floor
bounds the MFU the step can reach as compiled, and the floors' ratio what token dropping
can save, before any GPU time is spent. The JSON has the sums by kind, by part of the
model and by pass, the kernels with the largest floors, and the compiled memory.

It is not a timing. Without a device XLA cannot autotune (the real run may pick other
GEMM kernels), bytes count each operand once in full (in-place updates and L2 reuse cost
less), and the gaps between kernels are not in the floor (the kernel count is given).
"""
from __future__ import annotations

import os
import sys
import time

# The host runs the compiler; the CUDA plugin's checks of a local GPU do not apply.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")

from absl import app, flags  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from accelerator_cases import CASES, SMOKE_CASES, case_config  # noqa: E402

# What XLA needs to know of a GPU to compile for it. bandwidth: bytes/s of its memory.
GPUS = {
    "h100": {"name": "NVIDIA H100 80GB HBM3", "sms": 132, "clock_ghz": 1.98,
             "bandwidth": 3.35e12, "memory_bytes": 80 * 10**9, "l2_bytes": 50 * 2**20,
             "compute_capability": (9, 0), "shared_per_sm": 228 * 2**10},
    "h200": {"name": "NVIDIA H200", "sms": 132, "clock_ghz": 1.98,
             "bandwidth": 4.8e12, "memory_bytes": 141 * 10**9, "l2_bytes": 50 * 2**20,
             "compute_capability": (9, 0), "shared_per_sm": 228 * 2**10},
}
_OUTPUT = flags.DEFINE_string("output", "", "JSON path (and a PNG beside it); default: print")
_GPU = flags.DEFINE_enum("gpu", "h100", sorted(GPUS), "The GPU to compile for.")
_CASES = flags.DEFINE_list("cases", ["s128_einsum", "s128_cudnn", "s512_cudnn"],
                           f"Cases of accelerator_cases: {', '.join(CASES)}")
_TOP = flags.DEFINE_integer("top", 15, "Kernels with the largest floors listed per step.")
_SMOKE = flags.DEFINE_bool("smoke", False, "Checks the script without the CUDA plugin: the "
                           "tiny smoke cases compiled for this host's CPU, floors at --gpu's "
                           "numbers (the test suite runs it).")


def target_config(gpu: str) -> str:
  """The GpuTargetConfigProto (text format) of `gpu`: its description as the compiler
  reads it from a device, with the CUDA and cuDNN versions this install compiles for."""
  g = GPUS[gpu]
  major, minor = g["compute_capability"]
  return f"""gpu_device_info {{
  name: "{g['name']}"
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_block_optin: {g['shared_per_sm'] - 1024}
  shared_memory_per_core: {g['shared_per_sm']}
  threads_per_core_limit: 2048
  core_count: {g['sms']}
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  thread_dim_limit_x: 1024
  thread_dim_limit_y: 1024
  thread_dim_limit_z: 64
  memory_bandwidth: {int(g['bandwidth'])}
  l2_cache_size: {g['l2_bytes']}
  clock_rate_ghz: {g['clock_ghz']}
  device_memory_size: {g['memory_bytes']}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  device_vendor: "NVIDIA Corporation"
  runtime_version: "12.9.0"
  dnn_version: "9.8.0"
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 patch: 0 }}
device_description_str: "{g['name']}"
"""


def compile_only_device(gpu: str):
  """One compile-only CUDA device described by `target_config(gpu)`."""
  from jax.experimental import topologies
  topology = topologies.get_topology_desc("gpu_floor", "cuda", target_config=target_config(gpu),
                                          topology="1x1x1")
  return topology.devices[0]


def compile_case(name: str, device, gpu: str, top: int, smoke: bool = False) -> dict:
  """A case's full and drop steps compiled for `device`: per step the kernel summary, its
  floor at `gpu`'s peak and bandwidth, the MFU there, compiled memory, the `top` kernels."""
  import jax

  from tokendrop_jax import benchmark, flops
  from tokendrop_jax.training import kernels
  case = (SMOKE_CASES if smoke else CASES)[name]
  config = case_config(smoke, *case)
  bench = benchmark.setup(config, "loss_ema")
  on_device = jax.sharding.SingleDeviceSharding(device)
  abstract = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=on_device)  # noqa: E731
  state, batch = jax.tree.map(abstract, bench.abstract), jax.tree.map(abstract, bench.batch)
  peak = flops.peak_flops_per_device(GPUS[gpu]["name"])
  bandwidth = GPUS[gpu]["bandwidth"]
  seq_len, batch_size, keep, attention, prng, attn_dropout, dropout = case
  out = {"seq_len": seq_len, "batch_size": batch_size, "keep_tokens": keep,
         "attention": attention, "prng_impl": prng, "attention_dropout_rate": attn_dropout,
         "dropout_rate": dropout}
  for kind, settings in bench.kinds().items():
    t0 = time.perf_counter()
    compiled = bench.jit_step(settings).lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    inv = kernels.inventory(compiled.as_text())
    summary = kernels.summary(inv, peak, bandwidth)
    step_flops = bench.step_flops(keep if kind == "drop" else None)
    mem = compiled.memory_analysis()
    inv.sort(key=lambda k: -kernels.floor_s(k, peak, bandwidth))
    out[kind] = {
        **summary, "compile_s": compile_s, "step_flops": step_flops,
        "mfu_at_floor": step_flops / (summary["floor_s"] * peak),
        "temp_bytes": mem.temp_size_in_bytes, "argument_bytes": mem.argument_size_in_bytes,
        "top": [{**k, "floor_s": kernels.floor_s(k, peak, bandwidth)} for k in inv[:top]]}
  out["floor_drop_over_full"] = out["drop"]["floor_s"] / out["full"]["floor_s"]
  out["flops_ratio"] = out["drop"]["step_flops"] / out["full"]["step_flops"]
  return out


def plot(results: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  cases = results["cases"]
  kinds = sorted({k for c in cases.values() for s in ("full", "drop") for k in c[s]["by_kind"]},
                 key=lambda k: -sum(c[s]["by_kind"].get(k, {}).get("floor_s", 0)
                                    for c in cases.values() for s in ("full", "drop")))
  labels = [f"{n}\n{s}" for n in cases for s in ("full", "drop")]
  fig, ax = plt.subplots(figsize=(1.6 * len(labels) + 2, 4.5))
  bottom = [0.0] * len(labels)
  for kind in kinds:
    values = [cases[n][s]["by_kind"].get(kind, {}).get("floor_s", 0) * 1e3
              for n in cases for s in ("full", "drop")]
    ax.bar(labels, values, bottom=bottom, label=kind)
    bottom = [b + v for b, v in zip(bottom, values)]
  ax.set_ylabel("roofline floor per step (ms)")
  ax.set_title(f"bert_base bf16 train step compiled for {results['device']} "
               "(no device): floor by kernel kind")
  ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv):
  del argv
  from tokendrop_jax import accelerator, benchmark
  cases = SMOKE_CASES if _SMOKE.value else CASES
  names = ["s32_einsum", "s32_xla"] if _SMOKE.value and not _CASES.present else _CASES.value
  unknown = sorted(set(names) - set(cases))
  if unknown:
    raise app.UsageError(f"--cases: unknown {unknown}; known: {sorted(cases)}")
  gpu = _GPU.value
  if _SMOKE.value:
    import jax
    device = jax.devices("cpu")[0]
  else:
    device = compile_only_device(gpu)
  g = GPUS[gpu]
  results = {"device": "this host's CPU (--smoke)" if _SMOKE.value else g["name"], "gpu": gpu,
             "bandwidth": g["bandwidth"], "compile_only": True, "smoke": _SMOKE.value, "command": " ".join(["benchmarks/gpu_floor.py", *sys.argv[1:]]),
             "versions": accelerator.versions(("jax", "jaxlib", "jax-cuda12-plugin",
                                               "nvidia-cudnn-cu12")),
             "cases": {}}
  for name in names:
    r = results["cases"][name] = compile_case(name, device, gpu, _TOP.value, _SMOKE.value)
    print(f"{name}: {r['full']['kernels']} / {r['drop']['kernels']} kernels, floor "
          f"{r['full']['floor_s'] * 1e3:.1f} / {r['drop']['floor_s'] * 1e3:.1f} ms "
          f"(matmuls {r['full']['matmul_floor_s'] * 1e3:.1f} / "
          f"{r['drop']['matmul_floor_s'] * 1e3:.1f}), MFU at the floor "
          f"{r['full']['mfu_at_floor']:.1%} / {r['drop']['mfu_at_floor']:.1%}; drop/full "
          f"x{r['floor_drop_over_full']:.3f} (FLOPs x{r['flops_ratio']:.3f})", flush=True)
    if _OUTPUT.value:  # after every case: a run cut short keeps what it compiled
      benchmark.write_results(results, _OUTPUT.value, plot)


if __name__ == "__main__":
  app.run(main)
