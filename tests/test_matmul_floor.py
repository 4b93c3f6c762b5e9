"""benchmarks/matmul_floor.py: its list of a step's matrix products adds up to the
package's FLOPs counter, each product is the gradient its name says, and the script runs."""
import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from tokendrop_jax import config_lib, flops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "matmul_floor", os.path.join(ROOT, "benchmarks", "matmul_floor.py"))


@pytest.fixture(scope="module")
def floor():
  """The script's module; its absl flags are global, so they are removed after these tests."""
  from absl import flags
  before = set(flags.FLAGS)
  module = importlib.util.module_from_spec(_spec)
  _spec.loader.exec_module(module)
  yield module
  for name in set(flags.FLAGS) - before:
    delattr(flags.FLAGS, name)


@pytest.mark.parametrize("config_name", ["bench_cpu", "tiny", "bert_base"])
def test_products_add_up_to_the_flops_counter(floor, config_name):
  config = config_lib.load_file(os.path.join(ROOT, "configs", f"{config_name}.py"))
  cfg, d = config_lib.model_config(config), config.data
  b, s, p, keep = d.global_batch_size, d.seq_len, d.max_predictions_per_seq, config.token_drop.keep_tokens
  total = lambda mms: sum(floor.matmul_flops(mm) for mm in mms)  # noqa: E731
  assert total(floor.step_matmuls(cfg, b, s, p)) == flops.train_step_flops(cfg, b, s, p)
  assert total(floor.step_matmuls(cfg, b, s, p, keep)) == flops.train_step_flops(cfg, b, s, p, keep)
  # A head over every position (Hugging Face's) is the counter with s predictions.
  assert total(floor.step_matmuls(cfg, b, s, s)) == flops.train_step_flops(cfg, b, s, s)


def _shape(mm):
  lhs, rhs, dims = mm
  return jax.eval_shape(lambda a, b: jax.lax.dot_general(a, b, dims),
                        jax.ShapeDtypeStruct(lhs, jnp.float32),
                        jax.ShapeDtypeStruct(rhs, jnp.float32)).shape


def test_backward_products_have_the_gradient_shapes(floor):
  fwd, dx, dw = floor.dense(6, 4, 5)
  assert _shape(fwd) == (6, 5) and _shape(dx) == fwd[0] and _shape(dw) == fwd[1]
  fwd, dx, dw = floor.batched(3, 6, 4, 5)
  assert _shape(fwd) == (3, 6, 5) and _shape(dx) == fwd[0] and _shape(dw) == fwd[1]
  for mm in (fwd, dx, dw):  # 2 x batch x m x k x n, whichever way round
    assert floor.matmul_flops(mm) == 2 * 3 * 6 * 4 * 5


def test_script_on_tiny_writes_floor_and_steps(tmp_path):
  out = tmp_path / "floor.json"
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "matmul_floor.py"),
                         "--config=configs/tiny.py", "--steps=1", "--warmup=0", "--repeats=1",
                         f"--output={out}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(out.read_text())
  assert set(r["rows"]) == {"ours_full", "ours_drop"}
  for row in r["rows"].values():
    assert row["floor_s"] > 0 and row["step_s"] > 0
    assert row["step_over_floor"] == pytest.approx(row["step_s"] / row["floor_s"])
  assert r["rows"]["ours_drop"]["gflop"] < r["rows"]["ours_full"]["gflop"]
  assert sum(p["count"] for p in r["products"]) == sum(row["products"] for row in r["rows"].values())
