"""The benchmark harness (tokendrop_jax.benchmark): timers, summaries, the results file
and the environment it records, on stand-in thunks (no model)."""
import json
import os
import subprocess
import sys

import pytest

from tokendrop_jax import benchmark


def test_time_interleaved_warms_up_then_goes_round_the_names():
  calls = []
  thunks = {name: (lambda n=name: calls.append(n)) for name in ("a", "b", "c")}
  times = benchmark.time_interleaved(thunks, repeats=3, warmup=2)
  assert calls == ["a", "b", "c"] * 5
  assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
  assert all(t >= 0 for v in times.values() for t in v)


def test_time_pipelined_runs_each_name_in_a_block_and_waits_once_a_block(monkeypatch):
  import jax
  calls, waits = [], []
  thunks = {name: (lambda n=name: calls.append(n) or n) for name in ("a", "b")}
  monkeypatch.setattr(jax, "block_until_ready", lambda x: waits.append(x) or x)
  times = benchmark.time_pipelined(thunks, steps=3, rounds=2)
  assert calls == ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3
  assert waits == ["a", "b", "a", "b"]  # the last call of each block only
  assert {k: len(v) for k, v in times.items()} == {"a": 2, "b": 2}


def test_time_steps_times_a_first_step_then_the_interleaved_ones():
  states = {"x": 0, "y": 10}
  steps_fn = {"x": lambda s, batch: (s + batch, {"s": s}), "y": lambda s, batch: (s - batch, {})}
  times, first_s = benchmark.time_steps(steps_fn, states, 1, steps=4, warmup=2)
  assert set(first_s) == {"x", "y"} and all(len(v) == 4 for v in times.values())
  assert states == {"x": 7, "y": 3}  # 1 first + 2 warm-up + 4 timed steps each


def test_timed_waits_for_jax_and_counts_cpu_time():
  import jax.numpy as jnp

  def busy():
    total = 0
    for i in range(300_000):
      total += i
    return total, jnp.ones((4,))

  t = benchmark.timed(busy)
  assert t.value[0] == sum(range(300_000)) and t.value[1].shape == (4,)
  assert t.wall_s > 0 and t.cpu_s > 0
  value, wall_s, cpu_s = benchmark.timed(lambda: "not an array")  # unpacks; any value
  assert value == "not an array" and wall_s >= 0 and cpu_s >= 0


def test_medians_and_ratios():
  med = benchmark.medians({"full": [3.0, 1.0, 2.0], "drop": [1.5, 9.0, 1.4, 1.6]})
  assert med == {"full": 2.0, "drop": 1.55}
  assert benchmark.ratios(med, "full") == {"full": 1.0, "drop": pytest.approx(0.775)}


def test_environment_says_where_and_with_what():
  import jax
  env = benchmark.environment()
  assert env["device"] == jax.devices()[0].device_kind
  assert env["num_devices"] == jax.device_count() and env["platform"] == jax.default_backend()
  assert env["versions"]["jax"] == jax.__version__ and "flax" in env["versions"]
  assert env["xla_flags"] == os.environ.get("XLA_FLAGS", "")
  assert env["cpu_count"] == os.cpu_count() and env["host_cpu"]
  assert env["commit"] == benchmark.code_version() and env["command"] == " ".join(sys.argv)
  json.dumps(env)  # all of it goes into a JSON


def test_write_results_adds_the_environment_and_plots_beside(tmp_path):
  plotted = []
  path = str(tmp_path / "sub" / "r.json")
  written = benchmark.write_results({"x": 1}, path, lambda r, png: plotted.append((r, png)))
  assert json.loads(open(path).read()) == written
  assert written["x"] == 1 and written["environment"]["cpu_count"] == os.cpu_count()
  assert plotted == [(written, str(tmp_path / "sub" / "r.png"))]
  assert os.listdir(tmp_path / "sub") == ["r.json"]  # replaced whole: no partial file left
  assert benchmark.read_results(path) == written
  assert benchmark.read_results(str(tmp_path / "none.json")) is None


def test_code_version_reads_git_in_a_checkout_and_commit_in_a_copy(tmp_path):
  copy = tmp_path / "copy"
  copy.mkdir()
  (copy / "COMMIT").write_text("abc123 (git archive)\n")
  assert benchmark.code_version(str(copy)) == "abc123 (git archive)"
  assert benchmark.code_version(str(tmp_path)) == "unknown"
  repo = tmp_path / "repo"
  repo.mkdir()
  git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True,  # noqa: E731
                                  text=True).stdout.strip()
  git("init", "-q")
  git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x")
  (repo / "COMMIT").write_text("stale\n")  # left over in a checkout: not read
  assert benchmark.code_version(str(repo)) == git("rev-parse", "HEAD")
