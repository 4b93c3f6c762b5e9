"""benchmarks/remat_memory.py end to end in --smoke mode (config tiny, AOT only)."""
import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script():
  spec = importlib.util.spec_from_file_location(
      "remat_memory", os.path.join(ROOT, "benchmarks", "remat_memory.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.slow
def test_smoke_run_writes_every_policy_and_step(tmp_path):
  bench = _script()
  out = str(tmp_path / "remat_memory.json")
  bench.run(smoke=True, policies=("full",), output=out, command="first")
  results = bench.run(smoke=True, policies=("none",), output=out, merge=True, command="second")
  assert results == json.loads(open(out).read())
  assert results["commands"] == ["first", "second"] and results["config"] == "tiny"
  assert (results["global_batch"], results["keep_tokens"]) == (16, 32)
  records = {(r["policy"], r["step"]): r for r in results["records"]}
  assert set(records) == {(p, s) for p in ("none", "full") for s in ("full", "drop32")}
  for r in records.values():
    assert r["scheduler"] == "default" and r["temp_bytes"] > 0 and r["argument_bytes"] > 0
    assert r["total_bytes"] == (r["argument_bytes"] + r["output_bytes"] - r["alias_bytes"]
                                + r["temp_bytes"])
  # The state is the same whatever the policy: only temporaries may differ.
  assert records[("none", "full")]["argument_bytes"] == records[("full", "full")]["argument_bytes"]
  table = bench.markdown(results).splitlines()
  assert table[0] == ("| `model.remat` | full, default scheduler | drop32, default scheduler |")
  assert [line.split(" | ")[0] for line in table[2:]] == ["| `none`", "| `full`"]


def test_memory_scheduler_needs_a_fresh_backend():
  """The XLA flag is read when JAX starts its backend (here: already, by conftest)."""
  import jax
  jax.devices()
  with pytest.raises(RuntimeError, match="--scheduler=memory needs XLA_FLAGS"):
    _script().use_scheduler("memory")
