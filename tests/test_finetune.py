"""GLUE fine-tuning end to end: learns a synthetic task, loads pretraining checkpoints,
resumes bit-exactly after SIGTERM, writes predictions, refuses bad input by name."""
import json
import os
import random
import shutil
import signal

import jax
import numpy as np
import pytest
from absl import flags

from tests.test_config import load
from tests.test_pretrained import shared_pretrain_workdir
from tokendrop_jax import config_checks
from tokendrop_jax.data import glue, glue_batches
from tokendrop_jax.training import finetune_loop, preemption, pretrained, runner
from tokendrop_jax.training import workdir as workdir_lib

flags.FLAGS.mark_as_parsed()

@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
  """Every run here re-jits the same steps: a persistent compile cache (this module
  only) turns the repeats into loads, which keeps the suite within its time budget."""
  from jax.experimental.compilation_cache import compilation_cache
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
  old = {n: getattr(jax.config, n) for n in names}
  jax.config.update(names[0], str(tmp_path_factory.mktemp("jax_cache")))
  jax.config.update(names[1], 0.0)
  compilation_cache.reset_cache()
  yield
  for n, v in old.items():
    jax.config.update(n, v)
  compilation_cache.reset_cache()


FILLER = ("the a of and to in is was for on with as by at from this that it an be are or "
          "one two new old big small red blue").split()


def write_task(path, n, seed, labels=True):
  """Balanced binary task: the label is which of two marker words the sentence holds."""
  r = random.Random(seed)
  lines = ["sentence\tlabel" if labels else "index\tsentence"]
  for i in range(n):
    y = i % 2
    words = [r.choice(FILLER) for _ in range(r.randint(3, 8))]
    words.insert(r.randint(0, len(words)), "excellent" if y else "terrible")
    lines.append(f"{' '.join(words)}\t{y}" if labels else f"{i}\t{' '.join(words)}")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return str(path)


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
  d = tmp_path_factory.mktemp("synthetic")
  return {"train_file": write_task(d / "train.tsv", 256, 0),
          "eval_file": write_task(d / "dev.tsv", 96, 1),
          "predict_file": write_task(d / "test.tsv", 37, 2, labels=False)}


@pytest.fixture(scope="module")
def pretrain(tmp_path_factory):
  """(workdir, {step: params}): a pretraining workdir as the train main writes it."""
  return shared_pretrain_workdir(tmp_path_factory)


def set_fields(c, fields):
  """`{"data.seq_len": 16, ...}` -> c.data.seq_len = 16, ..."""
  for dotted, value in (fields or {}).items():
    *sections, name = dotted.split(".")
    node = c
    for section in sections:
      node = node[section]
    node[name] = value
  return c


def random_init_config(tokenizer_model, files, fields=None):
  c = load("glue", "sst2")
  c.init_from = ""
  c.model.update(vocab_size=300, hidden_size=32, num_layers=2, num_heads=2,
                 intermediate_size=64, max_position=32)
  c.data.update(tokenizer_model=tokenizer_model, seq_len=16, global_batch_size=16, **files)
  c.optim.learning_rate = 2e-3
  c.train.update(num_epochs=3, log_every=4, checkpoint_every=100, keep_checkpoints=3,
                 async_checkpoint=False)
  return set_fields(c, fields)


def read_losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, pretrain, task_files):
  workdir = str(tmp_path_factory.mktemp("ft") / "run")
  config = random_init_config(workdir_lib.tokenizer_path(pretrain[0]), task_files)
  return config, workdir, finetune_loop.train_and_evaluate(config, workdir)


def test_learns_synthetic_task_and_writes_outputs(uninterrupted, task_files):
  _, workdir, summary = uninterrupted
  assert summary["step"] == summary["num_steps"] == 3 * 16
  assert summary["jit_cache_sizes"] == {"train": 1}  # no recompiles (padded last batches too)
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert results == summary["results"]
  assert [e["epoch"] for e in results["epochs"]] == [1, 2, 3]
  assert results["last"]["step"] == 48 and results["last"] == results["epochs"][-1]
  assert results["best"]["accuracy"] == max(e["accuracy"] for e in results["epochs"])
  assert results["last"]["accuracy"] >= 0.85, results  # chance is 0.5
  for name in ("metrics.jsonl", "config.json", "tensorboard", "checkpoints"):
    assert os.path.exists(os.path.join(workdir, name)), name
  with open(os.path.join(workdir, "predictions.tsv")) as f:
    lines = f.read().splitlines()
  assert lines[0] == "index\tprediction" and len(lines) == 1 + 37
  assert [l.split("\t")[0] for l in lines[1:]] == [str(i) for i in range(37)]
  preds = np.array([int(l.split("\t")[1]) for l in lines[1:]])
  assert np.mean(preds == np.arange(37) % 2) >= 0.85  # test rows alternate like train


def test_sigterm_then_resume_is_bit_exact(uninterrupted, monkeypatch, tmp_path):
  config, ref_dir, ref = uninterrupted
  workdir = str(tmp_path / "preempted")
  real_guard = preemption.PreemptionGuard

  class SigtermAt20(real_guard):
    def should_stop(self, step):
      if step == 20:  # mid-epoch 2, not a checkpoint step: a real signal to this process
        os.kill(os.getpid(), signal.SIGTERM)
      return super().should_stop(step)

  monkeypatch.setattr(preemption, "PreemptionGuard", SigtermAt20)
  first = finetune_loop.train_and_evaluate(config, workdir)
  assert first["step"] == 20 and "results" not in first
  assert not os.path.exists(os.path.join(workdir, "results.json"))
  monkeypatch.setattr(preemption, "PreemptionGuard", real_guard)
  second = finetune_loop.train_and_evaluate(config, workdir)
  assert second["step"] == 48
  a = pretrained.restore_params(os.path.join(ref_dir, "checkpoints", "48"))
  b = pretrained.restore_params(os.path.join(workdir, "checkpoints", "48"))
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert read_losses(workdir) == read_losses(ref_dir)
  assert second["results"]["epochs"] == ref["results"]["epochs"]


@pytest.fixture
def poison_step_6(monkeypatch):
  """NaN weights in the train batch of step 6 (1-based, as logged) of the next run."""
  real, calls = glue_batches.global_batch, []

  def poisoned(arrays, rows, weights, *args, **kwargs):
    out = real(arrays, rows, weights, *args, **kwargs)
    if "labels" in out:  # train batches only (eval and predict batches hold inputs only)
      calls.append(1)
      if len(calls) == 6:
        out["weights"] = np.full_like(out["weights"], np.nan)
    return out

  monkeypatch.setattr(glue_batches, "global_batch", poisoned)
  return calls


def test_nan_policy_is_the_shared_loops(pretrain, task_files, tmp_path, monkeypatch,
                                        poison_step_6, capsys):
  """stop: NonFiniteLossError naming the step; skip: the update is dropped, counted, and
  the count survives a SIGTERM + resume (kept in the checkpoint)."""
  tok = workdir_lib.tokenizer_path(pretrain[0])
  with pytest.raises(runner.NonFiniteLossError, match="at step 6; stopping"):
    finetune_loop.train_and_evaluate(random_init_config(tok, task_files), str(tmp_path / "stop"))

  poison_step_6.clear()
  real_guard = preemption.PreemptionGuard

  class SigtermAt20(real_guard):
    def should_stop(self, step):
      return step == 20 or super().should_stop(step)

  monkeypatch.setattr(preemption, "PreemptionGuard", SigtermAt20)
  config = random_init_config(tok, task_files, {"train.nan_policy": "skip"})
  first = finetune_loop.train_and_evaluate(config, str(tmp_path / "skip"))
  assert first["step"] == 20 and first["skipped_steps"] == 1
  assert "step 6: non-finite loss/gradient, update skipped" in capsys.readouterr().out
  monkeypatch.setattr(preemption, "PreemptionGuard", real_guard)
  second = finetune_loop.train_and_evaluate(config, str(tmp_path / "skip"))
  assert second["step"] == 48 and second["skipped_steps"] == 1
  rows = [json.loads(l) for l in open(tmp_path / "skip" / "metrics.jsonl")]
  assert [r["step"] for r in rows if r.get("skipped")] == []  # step 6 is not a log step
  assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
  params = pretrained.restore_params(tmp_path / "skip" / "checkpoints" / "48")
  assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(params))
  assert second["results"]["last"]["accuracy"] >= 0.85


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
  a, b = glue_batches.epoch_order(0, 1, 50), glue_batches.epoch_order(0, 1, 50)
  np.testing.assert_array_equal(a, b)
  assert sorted(a.tolist()) == list(range(50))
  assert not np.array_equal(a, glue_batches.epoch_order(0, 2, 50))
  rows, w = glue_batches.batch_rows(a, 3, 16)  # rows 48, 49 + 14 weight-0 pads
  assert rows.tolist()[:2] == a[48:].tolist() and w.tolist() == [1, 1] + [0] * 14


def pretrained_config(workdir, files, fields=None):
  c = load("glue", "sst2")
  c.init_from = workdir
  c.data.update(seq_len=16, global_batch_size=16, **files)
  c.train.update(num_epochs=1, async_checkpoint=False)
  return set_fields(c, fields)


def assert_encoder_loaded(config, expected_bert, expected_step):
  """The fine-tuning state at step 0 holds the pretrained encoder, a new head, no MLM."""
  config_checks.validate(config)
  init = pretrained.resolve_init(config)
  run = finetune_loop.build(config, glue.get_task(config.task), init.model_cfg, 64)
  bert, step = pretrained.load_encoder(init, run.layout.abstract.params["bert"],
                                       config.init_step)
  assert step == expected_step
  state = jax.device_get(run.init_state(bert))
  assert int(state.step) == 0 and set(state.params) == {"bert", "pooler", "classifier"}
  assert state.params["classifier"]["kernel"].shape == (init.model_cfg.hidden_size, 2)
  jax.tree.map(np.testing.assert_array_equal, state.params["bert"], expected_bert)


def test_loads_pretrained_encoder(pretrain, task_files):
  workdir, saved = pretrain
  assert_encoder_loaded(pretrained_config(workdir, task_files), saved[5]["bert"], 5)
  assert_encoder_loaded(pretrained_config(workdir, task_files, {"init_step": 3}), saved[3]["bert"], 3)


# -- bad input: clear errors before anything compiles ------------------------


def copy_pretrain(src, dst):
  shutil.copytree(src, dst)
  return str(dst)


def test_bad_init_from(pretrain, task_files, tmp_path):
  workdir, _ = pretrain
  run_dir = str(tmp_path / "ft")
  with pytest.raises(ValueError, match="init_from is required"):
    finetune_loop.train_and_evaluate(pretrained_config(None, task_files), run_dir)
  with pytest.raises(FileNotFoundError, match="nowhere"):
    finetune_loop.train_and_evaluate(pretrained_config(str(tmp_path / "nowhere"), task_files),
                                     run_dir)
  empty = copy_pretrain(workdir, tmp_path / "no_ckpt")
  shutil.rmtree(os.path.join(empty, "checkpoints"))
  with pytest.raises(FileNotFoundError, match=r"init_from=.*no_ckpt.*has no checkpoint"):
    finetune_loop.train_and_evaluate(pretrained_config(empty, task_files), run_dir)
  with pytest.raises(ValueError, match=r"config.model.hidden_size is set"):
    c = pretrained_config(workdir, task_files)
    c.model.hidden_size = 64
    finetune_loop.train_and_evaluate(c, run_dir)
  with pytest.raises(ValueError, match=r"config.data.seq_len=64 exceeds .* max_position=48"):
    finetune_loop.train_and_evaluate(pretrained_config(workdir, task_files, {"data.seq_len": 64}),
                                     run_dir)
  with pytest.raises(FileNotFoundError, match="No checkpoint for step 4"):
    finetune_loop.train_and_evaluate(pretrained_config(workdir, task_files, {"init_step": 4}),
                                     run_dir)


def test_vocab_mismatch_names_files(pretrain, task_files, tmp_path):
  workdir, _ = pretrain
  other = copy_pretrain(workdir, tmp_path / "other_vocab")
  path = os.path.join(other, "config.json")
  with open(path) as f:
    cfg = json.load(f)
  cfg["model"]["vocab_size"] = 400
  with open(path, "w") as f:
    json.dump(cfg, f)
  with pytest.raises(ValueError, match=r"tokenizer .* has 300 pieces but model.vocab_size=400 "
                                       r"in .*other_vocab/config.json"):
    finetune_loop.train_and_evaluate(pretrained_config(other, task_files), str(tmp_path / "a"))
  # Config and tokenizer agree, the checkpoint does not.
  from tokendrop_jax.data import tokenizer as tokenizer_lib
  text = tmp_path / "text.txt"
  with open(text, "w") as f:
    f.write("\n".join(" ".join(random.Random(i).choices(FILLER, k=12)) + f" w{i} x{i % 97}"
                      for i in range(3000)) + "\n")
  tok = tokenizer_lib.train_tokenizer(str(text), 200, str(tmp_path / "tok200"), num_threads=1)
  cfg["model"]["vocab_size"] = 200
  with open(path, "w") as f:
    json.dump(cfg, f)
  with pytest.raises(ValueError, match=r"checkpoints/5: the word embedding has 300 rows but "
                                       r"model.vocab_size is 200"):
    finetune_loop.train_and_evaluate(pretrained_config(other, task_files, {"data.tokenizer_model": tok}),
                                     str(tmp_path / "b"))


def test_bad_task_files_are_named(pretrain, task_files, tmp_path):
  workdir, _ = pretrain
  bad_header = tmp_path / "train.tsv"
  bad_header.write_text("text\tlabel\nexcellent\t1\n")
  with pytest.raises(ValueError, match=rf"{bad_header}: header .* \['sentence', 'label'\]"):
    finetune_loop.train_and_evaluate(
        pretrained_config(workdir, task_files, {"data.train_file": str(bad_header)}), str(tmp_path / "a"))
  bad_label = tmp_path / "dev.tsv"
  bad_label.write_text("sentence\tlabel\nexcellent\t1\nterrible\t3\n")
  with pytest.raises(ValueError, match=rf"{bad_label}:3: label '3' out of range"):
    finetune_loop.train_and_evaluate(
        pretrained_config(workdir, task_files, {"data.eval_file": str(bad_label)}), str(tmp_path / "b"))


def test_changed_config_is_refused_on_resume(uninterrupted, tmp_path):
  config, ref_dir, _ = uninterrupted
  workdir = shutil.copytree(ref_dir, tmp_path / "copy")
  c = set_fields(load("glue", "sst2"), None)
  c.update(config.to_dict())
  c.train.seed = 1
  with pytest.raises(ValueError, match="train.seed=1 but the run in"):
    finetune_loop.train_and_evaluate(c, workdir)
  c.train.seed, c.optim.learning_rate = config.train.seed, 1e-2
  with pytest.raises(ValueError, match="optim.learning_rate=0.01 but the run in"):
    finetune_loop.train_and_evaluate(c, workdir)


# -- slow: real pretraining runs (token drop and full) and regression -------


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
  """Two `tiny` pretraining runs (loss_ema, none) sharing one corpus and tokenizer."""
  from tokendrop_jax.training import loop
  root = tmp_path_factory.mktemp("pretrain_real")
  out = {}
  for variant in ("loss_ema", "none"):
    c = load("tiny", variant)
    c.data.dataset_dir = str(root / "shared_data")
    if out:  # the first run's corpus and tokenizer: the dataset builds once
      first = out["loss_ema"]
      c.data.update(demo_corpus=False, tokenizer_model=os.path.join(first, "tokenizer.model"),
                    train_files=os.path.join(first, "corpus", "train.txt"),
                    valid_files=os.path.join(first, "corpus", "valid.txt"))
    c.train.update(num_steps=10, log_every=5, eval_every=10, eval_batches=1,
                   checkpoint_every=10, async_checkpoint=False)
    out[variant] = str(root / variant)
    loop.train_and_evaluate(c, out[variant])
  return out


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["loss_ema", "none"])
def test_finetunes_from_token_drop_and_full_pretraining(real_runs, variant, task_files, tmp_path):
  workdir = real_runs[variant]
  params, _, step = pretrained.load_pretrained(workdir)
  assert step == 10
  config = pretrained_config(workdir, task_files, {
      "data.seq_len": 32, "optim.learning_rate": 1e-3, "train.num_epochs": 2,
      "train.log_every": 8})
  assert_encoder_loaded(config, params["bert"], 10)
  summary = finetune_loop.train_and_evaluate(config, str(tmp_path / "ft"))
  r = summary["results"]
  assert r["init_step"] == 10 and r["init_from"] == workdir and len(r["epochs"]) == 2
  assert r["last"]["accuracy"] >= 0.8, r


@pytest.mark.slow
def test_stsb_regression_runs(pretrain, tmp_path):
  workdir, _ = pretrain
  r = random.Random(0)
  for name, n in (("train", 64), ("dev", 32)):
    lines = ["index\tgenre\tsentence1\tsentence2\tscore"]
    for i in range(n):
      s = r.uniform(0, 5)
      lines.append(f"{i}\tmain\t{' '.join(r.choices(FILLER, k=5))}\t"
                   f"{'excellent ' * int(s)}x\t{s:.2f}")
    (tmp_path / f"{name}.tsv").write_text("\n".join(lines) + "\n")
  c = load("glue", "stsb")
  c.init_from = workdir
  c.data.update(train_file=str(tmp_path / "train.tsv"), eval_file=str(tmp_path / "dev.tsv"),
                predict_file=str(tmp_path / "dev.tsv"), seq_len=24, global_batch_size=16)
  c.optim.learning_rate = 1e-3
  c.train.update(num_epochs=4, async_checkpoint=False)
  summary = finetune_loop.train_and_evaluate(c, str(tmp_path / "ft"))
  last = summary["results"]["last"]
  assert set(last) >= {"pearson", "spearman", "score"} and np.isfinite(last["score"])
  with open(tmp_path / "ft" / "predictions.tsv") as f:
    rows = f.read().splitlines()[1:]
  assert len(rows) == 32 and all(0.0 <= float(l.split("\t")[1]) <= 5.0 for l in rows)
