"""benchmarks/quality_offline_en.py's names, statistics and JSON merge, and
benchmarks/report.py's quality tables, on hand-made numbers (no training)."""
import importlib.util
import json
import os
import shutil

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


report = _module("report")


@pytest.fixture(scope="module")
def bench():
  """The benchmark module, loaded once; its absl flags are global, so they are
  removed again after this file's tests."""
  from absl import flags
  before = set(flags.FLAGS)
  yield _module("quality_offline_en")
  for name in set(flags.FLAGS) - before:
    delattr(flags.FLAGS, name)


def _run(strategy, seed, steps_loss, quiet_loss, accs):
  return {"strategy": strategy, "pretrain_seed": seed, "equal_steps_loss": steps_loss,
          "equal_quiet_time_loss": quiet_loss,
          "sst2_dev_accuracy_by_seed": {str(k): v for k, v in accs.items()}}


def _two_seeds():
  """none and loss_ema at pretraining seeds 0 and 1, fine-tuning seeds 0 and 1.

  SST-2 paired differences: seed 0 (-0.02, 0.00), seed 1 (-0.04, 0.00).
  """
  return {
      "none": _run("none", 0, 6.0, 6.2, {0: 0.70, 1: 0.60}),
      "loss_ema": _run("loss_ema", 0, 5.9, 6.0, {0: 0.68, 1: 0.60}),
      "none@seed1": _run("none", 1, 6.2, 6.4, {0: 0.80, 1: 0.70}),
      "loss_ema@seed1": _run("loss_ema", 1, 6.0, 6.1, {0: 0.76, 1: 0.70}),
  }


def test_summarize_known_answer(bench):
  s = bench.summarize(_two_seeds())
  e = s["loss_ema"]
  assert e["pretrain_seeds"] == [0, 1]
  assert e["equal_steps_loss"]["mean"] == pytest.approx(5.95)
  assert e["equal_steps_loss"]["sd"] == pytest.approx(0.1 / 2 ** 0.5)
  assert (e["equal_steps_loss"]["min"], e["equal_steps_loss"]["max"]) == (5.9, 6.0)
  assert e["equal_steps_loss_diff"]["by_seed"] == pytest.approx({0: -0.1, 1: -0.2})
  assert e["equal_steps_loss_diff"]["mean"] == pytest.approx(-0.15)
  assert e["equal_steps_loss_diff"]["se"] == pytest.approx(0.05)
  assert e["equal_quiet_time_loss"]["mean"] == pytest.approx(6.05)
  assert e["equal_quiet_time_loss_diff"]["mean"] == pytest.approx(-0.25)
  p = e["sst2_paired_diff"]
  assert p["mean"] == pytest.approx(-0.015)  # over the 4 pairs
  assert p["by_seed"][0]["mean"] == pytest.approx(-0.01)
  assert p["by_seed"][0]["se"] == pytest.approx(0.01)  # sd 0.01414 / sqrt(2)
  assert p["by_seed"][1]["mean"] == pytest.approx(-0.02)
  assert p["by_seed"][1]["se"] == pytest.approx(0.02)
  assert p["se"] == pytest.approx(0.005)  # sd(-0.01, -0.02) / sqrt(2)
  assert p["se_within"] == pytest.approx((0.01 ** 2 + 0.02 ** 2) ** 0.5 / 2)
  assert (p["n_pretrain_seeds"], p["n_pairs"]) == (2, 4)
  assert e["sst2_dev_accuracy"]["by_seed"] == pytest.approx({0: 0.64, 1: 0.73})
  # The baseline has spreads but no differences from itself.
  assert s["none"]["equal_steps_loss"]["mean"] == pytest.approx(6.1)
  assert "sst2_paired_diff" not in s["none"] and "equal_steps_loss_diff" not in s["none"]


def test_summarize_one_pretraining_seed_has_only_the_within_seed_error(bench):
  runs = {k: v for k, v in _two_seeds().items() if "@" not in k}
  p = bench.summarize(runs)["loss_ema"]["sst2_paired_diff"]
  assert p["se"] is None and p["se_within"] == pytest.approx(0.01)
  assert p["mean"] == pytest.approx(-0.01)
  assert bench.summarize(runs)["loss_ema"]["equal_steps_loss"]["sd"] is None


def test_summarize_pairs_only_the_fine_tuning_seeds_both_finished(bench):
  runs = _two_seeds()
  runs["loss_ema@seed1"]["sst2_dev_accuracy_by_seed"] = {"0": 0.76}  # seed 1 unfinished
  p = bench.summarize(runs)["loss_ema"]["sst2_paired_diff"]
  assert p["by_seed"][1] == {"mean": pytest.approx(-0.04), "se": None, "n": 1}
  assert p["se_within"] is None and p["n_pairs"] == 3
  assert p["mean"] == pytest.approx(-0.02)  # (-0.02 + 0 - 0.04) / 3


def _curves(runs):
  """Hand-made curves: (step, measured s, loss, quiet s)."""
  runs["none"]["curve"] = [(50, 50.0, 7.5, 40.0), (100, 150.0, 6.5, 140.0)]
  runs["loss_ema"]["curve"] = [(50, 50.0, 7.0, 40.0), (100, 100.0, 6.0, 90.0)]
  runs["none@seed1"]["curve"] = [(50, 60.0, 7.4, 50.0), (100, 160.0, 6.4, 150.0)]
  runs["loss_ema@seed1"]["curve"] = [(50, 55.0, 7.1, 45.0), (100, 105.0, 6.1, 95.0)]
  return runs


def test_add_run_figures_equal_time_and_pairs(bench):
  runs = _curves(_two_seeds())
  budgets = bench.add_run_figures(runs)
  assert budgets == {"equal_time_budget_s": 100.0, "equal_quiet_time_budget_s": 90.0}
  assert runs["none"]["equal_steps_loss"] == 6.5
  assert runs["none"]["equal_time_loss"] == pytest.approx(7.0)  # 100 s: half way
  assert runs["none"]["equal_quiet_time_loss"] == pytest.approx(7.0)  # 90 s: half way
  assert runs["loss_ema"]["equal_time_loss"] == pytest.approx(6.0)
  assert runs["none@seed1"]["equal_quiet_time_loss"] == pytest.approx(7.0)
  assert runs["loss_ema@seed1"]["total_quiet_clock_s"] == 95.0
  # Paired with `none` of the same pretraining seed.
  assert runs["loss_ema"]["sst2_paired_diff"] == pytest.approx(-0.01)
  assert runs["loss_ema@seed1"]["sst2_paired_diff"] == pytest.approx(-0.02)
  assert runs["loss_ema@seed1"]["sst2_paired_diff_sem"] == pytest.approx(0.02)
  assert runs["none@seed1"]["sst2_dev_accuracy"] == pytest.approx(0.75)
  assert runs["none@seed1"]["sst2_seeds"] == [0, 1]


def test_cost_clock_charges_each_step_its_kinds_time(bench):
  kinds = ["full", "keep8", "keep8", "keep8+sctd", "keep8"]
  cost = {"full": 1.0, "keep8": 0.5, "keep8+sctd": 0.75}
  assert bench.cost_clock(kinds, cost, [0, 1, 3, 5]) == pytest.approx([0.0, 1.0, 2.0, 3.25])


def test_step_kind_names_follow_the_step_plan(bench):
  c = bench.pretrain_config("loss_ema+sctd", 0)
  c.train.num_steps = 600
  names = bench.step_kind_names(c)
  keep = f"keep{c.token_drop.keep_tokens}"
  assert len(names) == 600 and names.count(keep + "+sctd") == 60
  assert all(n == (keep + "+sctd" if (i + 1) % 10 == 0 else keep) for i, n in enumerate(names))
  c = bench.pretrain_config("none", 0)
  c.train.num_steps = 10
  assert bench.step_kind_names(c) == ["full"] * 10


def test_add_run_figures_equal_cost_needs_a_clock_for_every_run(bench):
  runs = _curves(_two_seeds())
  clocks = {"none": [50.0, 100.0], "loss_ema": [40.0, 80.0], "none@seed1": [50.0, 100.0],
            "loss_ema@seed1": [40.0, 80.0]}
  budgets = bench.add_run_figures(runs, clocks)
  assert budgets["equal_cost_budget_s"] == 80.0
  assert runs["none"]["equal_cost_loss"] == pytest.approx(7.5 - 0.6)  # 80 of 50..100: 60%
  assert runs["loss_ema"]["equal_cost_loss"] == pytest.approx(6.0)
  assert runs["loss_ema"]["total_cost_s"] == 80.0
  assert runs["loss_ema"]["cost_clock_s"] == [40.0, 80.0]
  s = bench.summarize(runs)["loss_ema"]
  assert s["equal_cost_loss_diff"]["mean"] == pytest.approx(6.05 - 6.85)
  # A run without a clock (a strategy not calibrated): no equal-cost figures at all.
  del clocks["loss_ema@seed1"]
  budgets = bench.add_run_figures(runs, clocks)
  assert "equal_cost_budget_s" not in budgets
  assert not any("equal_cost_loss" in r or "cost_clock_s" in r for r in runs.values())


def test_cost_clocks_from_the_jsons_calibration(bench):
  runs = _curves(_two_seeds())
  results = {"num_steps": 100, "model_config": "configs/small.py", "dtype": "", "runs": runs,
             "calibration": {"none": {"step_s_by_kind": {"full": 1.0}},
                             "loss_ema": {"step_s_by_kind": {"keep128": 0.75}}}}
  clocks = bench.cost_clocks(results)
  assert clocks["none"] == pytest.approx([50.0, 100.0])
  assert clocks["loss_ema@seed1"] == pytest.approx([37.5, 75.0])
  del results["calibration"]["loss_ema"]
  assert set(bench.cost_clocks(results)) == {"none", "none@seed1"}


def test_calibrate_only_refuses_a_timed_json(bench, tmp_path):
  bench.flags.FLAGS(["quality", f"--output={tmp_path / 'q.json'}", "--train_time_s=60",
                     "--calibrate_only", f"--workdir={tmp_path / 'wd'}"])
  try:
    with pytest.raises(bench.app.UsageError, match="--calibrate_only is for fixed-step"):
      bench.main([])
  finally:
    bench.flags.FLAGS.unparse_flags()
  assert not (tmp_path / "q.json").exists()


def test_run_names_and_configs(bench):
  assert bench.run_name("loss_ema+sctd", 0) == "loss_ema+sctd"
  assert bench.run_name("loss_ema+sctd", 2) == "loss_ema+sctd@seed2"
  assert bench.parse_run_name("loss_ema+sctd@seed2") == ("loss_ema+sctd", 2)
  assert bench.parse_run_name("none") == ("none", 0)
  c = bench.pretrain_config("loss_ema+random_ties", 1)
  assert c.token_drop.strategy == "loss_ema" and c.token_drop.random_ties
  assert (c.train.seed, c.data.seed) == (1, 1)
  c = bench.pretrain_config("loss_ema+sctd_paper", 0)
  assert c.token_drop.consistency_form == "paper" and not c.token_drop.random_ties
  assert (c.train.seed, c.data.seed) == (0, 0)


SETTINGS = {"num_steps": 600, "sst2_train_examples": 8000, "sst2_epochs": 1,
            "sst2_seeds": [0, 1, 2, 3, 4], "batch_size": 16, "warmup_steps": 60, "eval_every": 50,
            "model_config": "configs/small.py", "dtype": "", "train_time_s": None}


def test_load_results_keeps_runs_and_refuses_other_settings(bench, tmp_path):
  committed = os.path.join(ROOT, "benchmarks", "results", "quality_offline_en.json")
  path = str(tmp_path / "q.json")
  shutil.copy(committed, path)
  with open(committed) as f:
    before = json.load(f)["runs"]
  results = bench.load_results(path, SETTINGS)
  assert list(results["runs"]) == list(before)
  assert results["runs"]["loss_ema+sctd"]["strategy"] == "loss_ema+sctd"
  # Runs from before --pretrain_seeds are seed 0; a run records its seed in its name.
  for name, r in results["runs"].items():
    assert r["pretrain_seed"] == (int(name.split("@seed")[1]) if "@seed" in name else 0)
  with pytest.raises(ValueError, match="num_steps"):
    bench.load_results(path, {**SETTINGS, "num_steps": 1000})
  assert bench.load_results(str(tmp_path / "new.json"), SETTINGS)["runs"] == {}


def test_report_only_rewrites_the_committed_runs_unchanged(bench, tmp_path):
  """A rerun skips what the JSON holds complete and drops nothing."""
  committed = os.path.join(ROOT, "benchmarks", "results", "quality_offline_en.json")
  out = tmp_path / "q.json"
  shutil.copy(committed, out)
  sst2 = tmp_path / "sst2"
  sst2.mkdir()
  (sst2 / "train.tsv").write_text("sentence\tlabel\n" + "a b\t1\n" * 20)
  bench.flags.FLAGS([
      "quality", f"--output={out}", f"--workdir={tmp_path / 'wd'}", f"--sst2_dir={sst2}",
      "--sst2_train_examples=8000", "--sst2_seeds=0,1,2,3,4", "--num_steps=600",
      "--eval_every=50", "--report_only", "--pretrain_seeds=0,1",
      "--strategies=none,loss_ema,loss_ema+sctd_paper"])
  try:
    bench.main([])
  finally:
    bench.flags.FLAGS.unparse_flags()
  with open(committed) as f:
    before = json.load(f)
  after = json.loads(out.read_text())
  assert list(after["runs"]) == list(before["runs"])
  for name, r in before["runs"].items():
    for key, value in r.items():
      expected = pytest.approx(value) if isinstance(value, float) else value
      assert after["runs"][name][key] == expected, (name, key)
  assert after["equal_quiet_time_budget_s"] == pytest.approx(before["equal_quiet_time_budget_s"])
  assert after["summary"]["loss_ema"]["sst2_paired_diff"]["by_seed"]["0"]["mean"] == pytest.approx(
      before["runs"]["loss_ema"]["sst2_paired_diff"])
  assert (tmp_path / "q.png").stat().st_size > 0


def test_same_losses(bench):
  a = [(50, 1.0, 7.0, 1.0), (100, 2.0, 6.0, 2.0)]
  assert bench.same_losses(a, [(50, 9.0, 7.0002, 9.0), (100, 9.0, 6.0, 9.0)])
  assert not bench.same_losses(a, [(50, 1.0, 7.01, 1.0), (100, 2.0, 6.0, 2.0)])
  assert not bench.same_losses(a, a[:1])


def test_report_prints_every_quality_table(bench, tmp_path, monkeypatch, capsys):
  results = {**SETTINGS, "sst2_seeds": [0, 1], "runs": _curves(_two_seeds())}
  results.update(bench.add_run_figures(results["runs"]))
  results["summary"] = bench.summarize(results["runs"])
  (tmp_path / "quality_offline_en.json").write_text(json.dumps(results))
  (tmp_path / "sst2_probe.json").write_text(json.dumps({"runs": {
      "none": {"dev_accuracy_by_layer": [0.66, 0.65]},
      "loss_ema": {"dev_accuracy_by_layer": [0.64, 0.63]}}}))
  monkeypatch.setattr(report, "RESULTS", str(tmp_path))
  report.quality_table()
  out = capsys.readouterr().out
  lines = out.splitlines()
  # Seed 0's runs first, then seed 1's.
  names = [line.split("|")[1].strip() for line in lines if line.startswith("| `")]
  assert names[:4] == ["`none`", "`loss_ema`", "`none@seed1`", "`loss_ema@seed1`"]
  row = next(line for line in lines if line.startswith("| `loss_ema@seed1` |"))
  assert "105 s (95 s) | 0.66× (0.63×)" in row and "-2.0 ± 2.0 pts" in row
  # The table over pretraining seeds: loss at 100 steps 6.0 and 6.1 (none: 6.5, 6.4);
  # SST-2 -1.5 points, s.e. 0.5 over both levels (1.1 from fine-tuning alone), 2 × 2 pairs.
  row = next(line for line in lines if line.startswith("| `loss_ema` | 0, 1 |"))
  assert "| 6.050 ± 0.071 [6.000, 6.100] | -0.400 ± 0.100 |" in row
  assert "| -1.5 ± 0.5 (1.1) pts | 2 × 2 |" in row
  row = next(line for line in lines if line.startswith("| `loss_ema` | -1.0 ± 1.0 |"))
  assert row.endswith("| -2.0 ± 2.0 |")
  assert "| `none` | 0.660 | 0.650 |" in out  # the probe table


def test_report_uses_the_calibrated_clock_where_the_json_has_one(bench, tmp_path, monkeypatch,
                                                                 capsys):
  results = {**SETTINGS, "sst2_seeds": [0, 1], "runs": _curves(_two_seeds())}
  clocks = {"none": [50.0, 100.0], "loss_ema": [40.0, 80.0], "none@seed1": [50.0, 100.0],
            "loss_ema@seed1": [40.0, 80.0]}
  results.update(bench.add_run_figures(results["runs"], clocks))
  results["summary"] = bench.summarize(results["runs"])
  (tmp_path / "quality_offline_en.json").write_text(json.dumps(results))
  monkeypatch.setattr(report, "RESULTS", str(tmp_path))
  report.quality_table()
  lines = capsys.readouterr().out.splitlines()
  assert any("80 s calibrated clock" in line for line in lines)
  row = next(line for line in lines if line.startswith("| `loss_ema@seed1` |"))
  assert "| 80 s (0.800×) | 6.100 |" in row
  assert any("equal cost = 80 s" in line for line in lines)
  # Seeds table: equal-cost loss 6.0 and 6.1 (none: 6.9 and 6.8, at 60% of 50..100 s).
  row = next(line for line in lines if line.startswith("| `loss_ema` | 0, 1 |"))
  assert "| 6.050 ± 0.071 [6.000, 6.100] | -0.800 ± 0.100 |" in row


def _smoke_inputs(tmp_path):
  """A tiny corpus (train/valid .txt.gz from the demo corpus) and SST-2 TSVs."""
  import gzip
  from tokendrop_jax.data import demo_corpus
  corpus = tmp_path / "corpus"
  for path in demo_corpus.write_demo_corpus(str(corpus), max_bytes=150_000, valid_every=5):
    with open(path, "rb") as src, gzip.open(path + ".gz", "wb") as dst:
      dst.write(src.read())
  sst2 = tmp_path / "sst2"
  sst2.mkdir()
  rows = "".join(f"{w} film\t{i % 2}\n" for i, w in enumerate(["a good", "a bad"] * 40))
  for name in ("train.tsv", "dev.tsv"):
    (sst2 / name).write_text("sentence\tlabel\n" + rows)
  return corpus, sst2


@pytest.mark.slow
def test_quality_gpu_smoke_plans_equal_time_runs(tmp_path):
  """benchmarks/quality_gpu.sh --smoke on the CPU: calibration, one planned run per
  strategy, SST-2, and the CPU experiment's JSON; a rerun skips everything."""
  import subprocess
  import sys
  corpus, sst2 = _smoke_inputs(tmp_path)
  out = tmp_path / "out"
  cmd = [os.path.join(ROOT, "benchmarks", "quality_gpu.sh"), str(out), "--smoke",
         f"--corpus_dir={corpus}", f"--sst2_dir={sst2}", "--train_time_s=3",
         "--strategies=none,loss_ema+sctd"]
  env = dict(os.environ, PYTHON=sys.executable)
  proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((out / "quality_gpu.json").read_text())
  assert results["train_time_s"] == 3 and results["model_config"] == "configs/tiny.py"
  assert results["num_steps"] is None
  cal = results["calibration"]
  assert set(cal) == {"none", "loss_ema+sctd"}
  assert set(cal["none"]["step_s_by_kind"]) == {"full"}
  assert set(cal["loss_ema+sctd"]["step_s_by_kind"]) == {"keep32", "keep32+sctd"}
  assert cal["loss_ema+sctd"]["kind_shares"]["keep32+sctd"] == pytest.approx(0.1, abs=0.01)
  for strategy, c in cal.items():
    r = results["runs"][strategy]
    # Each run takes the steps its calibrated step time fits in the budget.
    assert r["num_steps"] == max(1, int(3 // c["step_s"]))
    assert r["tokens"] == r["num_steps"] * 8 * 64
    assert r["curve"][-1][0] == r["num_steps"] and len(r["curve"]) >= 2
    assert set(r["sst2_dev_accuracy_by_seed"]) == {"0"}
  assert "equal_time_loss" in results["runs"]["loss_ema+sctd"]
  assert (out / "quality_gpu.png").stat().st_size > 0
  # Rerun: nothing is calibrated or trained again, and the JSON's runs are unchanged.
  again = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "calibration" not in again.stdout
  assert json.loads((out / "quality_gpu.json").read_text())["runs"] == results["runs"]


@pytest.mark.slow
def test_calibrate_only_measures_every_strategys_step_kinds(tmp_path):
  """The calibrated clock's step costs for a fixed-step JSON, with tiny; nothing trains."""
  import subprocess
  import sys
  out = tmp_path / "q.json"
  cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "quality_offline_en.py"),
         "--model_config=configs/tiny.py", "--num_steps=20", "--eval_every=10",
         f"--output={out}", f"--workdir={tmp_path / 'wd'}", f"--corpus_dir={tmp_path / 'none'}",
         "--calibrate_only", "--strategies=none,loss_ema+sctd"]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(out.read_text())
  cal = results["calibration"]
  assert set(cal) == {"none", "loss_ema+sctd"}
  assert set(cal["loss_ema+sctd"]["step_s_by_kind"]) == {"keep32", "keep32+sctd"}
  assert cal["loss_ema+sctd"]["kind_shares"]["keep32+sctd"] == pytest.approx(0.1)
  assert all(t > 0 for c in cal.values() for t in c["step_s_by_kind"].values())
  assert "num_steps" not in cal["none"]  # fixed steps: the costs plan nothing
  assert results["calibration_info"]["cpu_count"] == os.cpu_count()
  assert results["runs"] == {} and not (tmp_path / "wd" / "none").exists()
