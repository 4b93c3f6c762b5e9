"""benchmarks/sharded_comm.py end to end in --smoke mode (config tiny, global batch 24)."""
import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script():
  spec = importlib.util.spec_from_file_location(
      "sharded_comm", os.path.join(ROOT, "benchmarks", "sharded_comm.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.slow  # over 30 s on 2 cores; CI runs it in the slow suite
def test_smoke_run_writes_every_mesh_and_kind(tmp_path):
  bench = _script()
  out = tmp_path / "sharded_comm.json"
  bench.run(smoke=True, output=str(out), command="test")
  results = json.loads(out.read_text())
  assert (tmp_path / "sharded_comm.png").stat().st_size > 0
  assert results["not_run"] == [] and results["commands"] == ["test"]
  records = {(r["mesh"], r["kind"]): r for r in results["records"]}
  assert {k for k, _ in records} == set(bench.MESHES)
  for mesh in bench.MESHES:
    kinds = {k for m, k in records if m == mesh}
    assert "full" in kinds and any(k.startswith("drop") for k in kinds), (mesh, kinds)
    for kind in kinds:
      r = records[(mesh, kind)]
      assert r["total_bytes"] > 0 and r["total_bytes"] == sum(r["collective_bytes"].values())
      assert r["memory"]["temp_bytes"] > 0 and r["minimum_bytes"] > 0
      assert r["global_batch_collectives"] == sum(a["count"] for a in r["global_batch_arrays"])

  # Data parallel: the full step all-reduces at least every f32 gradient once.
  params = results["configs"]["tiny"]["param_bytes_f32"]
  data8 = records[("8x1x1", "full")]
  assert data8["minimum_bytes"] == params  # one all-reduce of all gradients, nothing else
  assert data8["total_bytes"] >= data8["collective_bytes"]["all-reduce"] >= params
  assert data8["global_batch_collectives"] == 0
  assert results["configs"]["tiny"]["batch_dim_collides_with"] == []  # 24: only the batch
  # FSDP: every weight with an `embed` dim (all but a few biases) is gathered once,
  # its gradient reduce-scattered to 1/8.
  fsdp = records[("1x8x1", "full")]
  assert 0.95 * params < fsdp["minimum"]["gather_bytes"] < params
  assert fsdp["minimum"]["gradient_bytes"] < params / 4
  assert fsdp["total_bytes"] >= fsdp["minimum"]["gather_bytes"]
  # Tensor parallelism adds activation all-reduces, fewer rows in the drop step.
  tp = {k: records[("2x2x2", k)]["minimum"]["tensor_activation_bytes"]
        for k in ("full", "drop32")}
  assert 0 < tp["drop32"] < tp["full"]


def test_probe_batch_avoids_the_models_sizes():
  bench = _script()
  tiny = bench.load_config("tiny", "loss_ema")  # seq_len = max_position = hidden = 64
  assert bench.probe_batch(tiny, 24, 8) is None
  assert bench.probe_batch(tiny, 64, 8) == 72
  assert bench.probe_batch(tiny, 32, 224) == 480  # 32 keep_tokens, 256 intermediate_size
