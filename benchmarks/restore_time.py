"""How long saving and restoring a `bert_base` train state (params + AdamW) takes here.

  python benchmarks/restore_time.py [--config=configs/bert_base.py] [--dir=/tmp/x] [--repeats=2]

Writes the state with the project's Checkpointer (orbax, fingerprint recorded),
restores it onto the same shardings (fingerprint verified, as on resume) and
reports seconds and GB; the figure quoted in docs/reliability.md.
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _load(path):
  from tokendrop_jax import config_lib
  return config_lib.load_file(path)


def _save(ckpt, state):
  ckpt.save(1, state, force=True)
  ckpt.wait()


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--config", default=os.path.join(ROOT, "configs", "bert_base.py"))
  p.add_argument("--dir", default=None, help="where to write (default: a tmp dir, removed)")
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "restore_time.json"))
  args = p.parse_args()

  import jax
  from tokendrop_jax import benchmark, synthetic
  from tokendrop_jax.training import checkpoint, loop

  config = _load(args.config)
  run = loop.build(config, synthetic.SPECIAL_IDS, devices=jax.devices()[:1])
  state, init_s, _ = benchmark.timed(run.init_state)
  leaves = jax.tree_util.tree_leaves(state)
  nbytes = sum(x.size * x.dtype.itemsize for x in leaves)
  n_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))

  root = args.dir or tempfile.mkdtemp(prefix="restore_time_")
  saves, restores = [], []
  try:
    for i in range(args.repeats):
      d = os.path.join(root, f"ckpt{i}")
      ckpt = checkpoint.Checkpointer(d, save_every=1, keep=1, async_save=False)
      saves.append(benchmark.timed(lambda c=ckpt: _save(c, state)).wall_s)
      ckpt.close()
      ckpt = checkpoint.Checkpointer(d, save_every=1, keep=1)
      restores.append(benchmark.timed(lambda c=ckpt: c.restore(run.layout.abstract)).wall_s)
      ckpt.close()
      disk = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)
      shutil.rmtree(d)
  finally:
    if not args.dir:
      shutil.rmtree(root, ignore_errors=True)

  result = {
      "config": os.path.relpath(args.config, ROOT),
      "what": "params + AdamW state + importance (TrainState), orbax via Checkpointer, "
              "fingerprint recorded on save and verified on restore",
      "params": int(n_params),
      "state_gb": round(nbytes / 1e9, 3),
      "disk_gb": round(disk / 1e9, 3),
      "save_s": [round(s, 2) for s in saves],
      "restore_s": [round(s, 2) for s in restores],
      "restore_s_median": round(statistics.median(restores), 2),
      "restore_gb_per_s": round(nbytes / 1e9 / statistics.median(restores), 3),
      "init_s": round(init_s, 2),
  }
  print(json.dumps(result, indent=2))
  benchmark.write_results(result, args.out)


if __name__ == "__main__":
  main()
