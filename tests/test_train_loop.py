"""The pretraining loop end to end: exact resume, sharding equivalence, bad input."""
import json
import os
import shutil

import jax
import numpy as np
import pytest
from absl import flags

from tests.resume_checks import final_state, losses, sigterm_once_training
from tests.test_config import load
from tokendrop_jax import synthetic
from tokendrop_jax.training import checkpoint, host_rows, loop, step_plan

flags.FLAGS.mark_as_parsed()


def tiny(tmp_root, **train):
  c = load("tiny")
  c.data.dataset_dir = str(tmp_root / "shared_data")  # built once, reused by every run
  c.train.update(num_steps=40, log_every=5, eval_every=20, checkpoint_every=10,
                 keep_checkpoints=10, async_checkpoint=True)
  c.train.update(**train)
  return c


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  root = tmp_path_factory.mktemp("loop")
  workdir = str(root / "full_run")
  summary = loop.train_and_evaluate(tiny(root), workdir)
  return root, workdir, summary


def test_run_writes_outputs_and_learns(uninterrupted):
  _, workdir, summary = uninterrupted
  assert summary["step"] == 40
  for name in ("metrics.jsonl", "config.json", "tokenizer.model", "summary.json",
               os.path.join("plots", "loss.png"), "tensorboard"):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "20", "30", "40"]
  l = losses(workdir)
  assert sorted(l) == [5, 10, 15, 20, 25, 30, 35, 40] and l[40] < l[5]
  assert summary["eval/loss"] < 7.0 and summary["jit_cache_sizes"] == {"drop32": 1, "full": 0}


def test_sigterm_then_resume_is_bit_exact(uninterrupted):
  root, ref_dir, _ = uninterrupted
  workdir = str(root / "preempted")
  config = tiny(root)
  sent = sigterm_once_training(workdir)
  first = loop.train_and_evaluate(config, workdir)
  assert sent and 5 <= first["step"] < 40  # stopped early by the signal...
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")))
  assert steps[-1] == first["step"]  # ...with a checkpoint of the step it stopped at
  second = loop.train_and_evaluate(config, workdir)
  assert second["step"] == 40 and second["jit_cache_sizes"]["drop32"] == 1
  ref_state, _ = final_state(config, ref_dir)
  state, _ = final_state(config, workdir)
  for a, b in zip(jax.tree_util.tree_leaves(ref_state), jax.tree_util.tree_leaves(state)):
    np.testing.assert_array_equal(a, b)
  assert losses(workdir) == losses(ref_dir)


SHARD_BATCH = synthetic.mlm_batch(0, 16, 64, 10, 1000, pad_fraction=0.3)


def _two_steps(config, devices, sizes):
  config.mesh.update(data=sizes[0], fsdp=sizes[1], tensor=sizes[2])
  run = loop.build(config, synthetic.SPECIAL_IDS, devices=devices)
  with jax.set_mesh(run.layout.mesh):
    state = run.init_state()
    for _ in range(2):
      batch = host_rows.from_global(SHARD_BATCH, run.layout.mesh)
      state, m = run.train_steps[step_plan.StepKind(keep_tokens=32)](state, batch)
  return jax.device_get(state), float(m["loss"])


@pytest.fixture(scope="module")
def single_device(uninterrupted):
  return _two_steps(tiny(uninterrupted[0]), jax.devices()[:1], (1, 1, 1))


@pytest.mark.parametrize("mesh", [(8, 1, 1), (2, 2, 2),
                                  pytest.param((1, 4, 2), marks=pytest.mark.slow)])
def test_sharded_step_matches_single_device(uninterrupted, single_device, mesh):
  one, loss1 = single_device
  many, loss8 = _two_steps(tiny(uninterrupted[0]), jax.devices(), mesh)
  assert loss1 == pytest.approx(loss8, rel=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(one.params), jax.tree_util.tree_leaves(many.params)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(one.importance, many.importance, atol=1e-5)


def test_checkpoint_from_8_devices_restores_on_1_and_4(uninterrupted):
  root, workdir, _ = uninterrupted
  config = tiny(root)
  ref, _ = final_state(config, workdir)
  for n in (1, 4):
    config.mesh.update(data=-1, fsdp=1, tensor=1)
    run = loop.build(config, synthetic.SPECIAL_IDS, devices=jax.devices()[:n])
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), save_every=1, keep=0)
    state, step = ckpt.restore(run.layout.abstract)
    ckpt.close()
    assert step == 40 and len(state.params["mlm"]["output_bias"].sharding.device_set) == n
    for a, b in zip(jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(state)):
      np.testing.assert_array_equal(a, np.asarray(b))


def test_incompatible_workdir_is_refused_untouched(uninterrupted):
  root, workdir, _ = uninterrupted
  config = tiny(root)
  config.model.hidden_size = 32
  before = {p: os.path.getmtime(os.path.join(workdir, p)) for p in os.listdir(workdir)}
  with pytest.raises(ValueError, match="model.hidden_size"):
    loop.train_and_evaluate(config, workdir)
  assert before == {p: os.path.getmtime(os.path.join(workdir, p)) for p in os.listdir(workdir)}


def edit_saved_config(workdir, edit) -> None:
  """Rewrites WORKDIR/config.json with `edit(saved dict)` applied: a run from an older version."""
  path = os.path.join(workdir, "config.json")
  with open(path) as f:
    saved = json.load(f)
  edit(saved)
  with open(path, "w") as f:
    json.dump(saved, f)


def test_another_number_of_input_shards_is_refused_untouched(uninterrupted, tmp_path):
  """Other shards would give other batches. A workdir from before virtual shards (no
  `num_shards` in its config.json) read one stream: data.num_shards=1 continues it."""
  root, workdir, _ = uninterrupted
  config = tiny(root)
  config.data.num_shards = 2
  before = {p: os.path.getmtime(os.path.join(workdir, p)) for p in os.listdir(workdir)}
  with pytest.raises(ValueError, match=r"data.num_shards=2 but the run .* started with 1"):
    loop.train_and_evaluate(config, workdir)
  assert before == {p: os.path.getmtime(os.path.join(workdir, p)) for p in os.listdir(workdir)}

  old = str(tmp_path / "old")
  shutil.copytree(workdir, old)
  edit_saved_config(old, lambda saved: saved["data"].pop("num_shards"))
  assert loop.train_and_evaluate(tiny(root), old)["step"] == 40  # finished: nothing refused
  with pytest.raises(ValueError, match=r"data.num_shards=2 but the run .* started with 1"):
    loop.train_and_evaluate(config, old)


def test_another_prng_impl_is_refused_untouched(uninterrupted, tmp_path):
  """Another PRNG gives other dropout masks. A workdir from before train.prng_impl,
  model.hidden_act and remat policies (no such fields, remat a bool) was threefry,
  tanh-GELU and remat=False == "none": the defaults continue it."""
  root, workdir, _ = uninterrupted
  config = tiny(root)
  config.train.prng_impl = "rbg"
  before = {p: os.path.getmtime(os.path.join(workdir, p)) for p in os.listdir(workdir)}
  with pytest.raises(ValueError, match=r"train.prng_impl='rbg' but the run .* started with "
                                       r"'threefry'"):
    loop.train_and_evaluate(config, workdir)
  assert before == {p: os.path.getmtime(os.path.join(workdir, p)) for p in os.listdir(workdir)}

  old = str(tmp_path / "old")
  shutil.copytree(workdir, old)

  def as_before(saved):
    del saved["train"]["prng_impl"], saved["model"]["hidden_act"]
    saved["model"]["remat"] = False

  edit_saved_config(old, as_before)
  with pytest.raises(ValueError, match=r"train.prng_impl='rbg' but the run .* started with "
                                       r"'threefry'"):
    loop.train_and_evaluate(config, old)
  gelu = tiny(root)
  gelu.model.hidden_act = "gelu"
  with pytest.raises(ValueError, match=r"model.hidden_act='gelu' but the run .* started with "
                                       r"'gelu_tanh'"):
    loop.train_and_evaluate(gelu, old)
  assert loop.train_and_evaluate(tiny(root), old)["step"] == 40  # finished: nothing refused
  edit_saved_config(old, lambda saved: saved["model"].update(remat=True))
  full = tiny(root)
  full.model.remat = "full"  # the same as True
  assert loop.train_and_evaluate(full, old)["step"] == 40
  full.model.remat = "dots"
  with pytest.raises(ValueError, match=r"model.remat='dots' but the run .* started with 'full'"):
    loop.train_and_evaluate(full, old)


def test_mesh_must_divide_devices(uninterrupted):
  config = tiny(uninterrupted[0])
  config.mesh.update(data=3, fsdp=1, tensor=1)
  with pytest.raises(ValueError, match=r"mesh\.data"):
    loop.build(config, synthetic.SPECIAL_IDS)


def test_batch_must_divide_into_data_shards(uninterrupted):
  config = tiny(uninterrupted[0])
  config.data.global_batch_size = 12
  with pytest.raises(ValueError, match="data.global_batch_size"):
    loop.build(config, synthetic.SPECIAL_IDS)


def test_drop_schedule_runs_full_steps_at_the_ends():
  c = load("tiny")
  c.train.num_steps = 100
  c.token_drop.update(full_start_fraction=0.1, full_end_fraction=0.2)
  assert [step_plan.kind_at(c, s).full for s in (0, 9, 10, 79, 80, 99)] == [
      True, True, False, False, True, True]
  c.token_drop.update(full_start_fraction=0.0, full_end_fraction=0.0)
  assert not any(step_plan.kind_at(c, s).full for s in range(100))


def test_rerunning_a_finished_run_changes_nothing(uninterrupted):
  root, workdir, summary = uninterrupted
  files = ("summary.json", "metrics.jsonl", os.path.join("plots", "loss.png"))
  before = {f: open(os.path.join(workdir, f), "rb").read() for f in files}
  again = loop.train_and_evaluate(tiny(root), workdir)
  assert again["step"] == 40 and again["eval/loss"] == summary["eval/loss"]
  assert before == {f: open(os.path.join(workdir, f), "rb").read() for f in files}


def _tree_bytes(root) -> dict[str, bytes]:
  out = {}
  for folder, _, names in os.walk(root):
    for name in names:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = f.read()
  return out


def test_a_resume_that_changes_what_the_run_is_is_refused_naming_every_field(
    uninterrupted, tmp_path):
  """Another strategy, learning rate, batch and data seed: each is named with both values,
  the flag that would allow them is spelled out, and the workdir is byte for byte as it was."""
  root, ref_dir, _ = uninterrupted
  workdir = str(tmp_path / "run")
  shutil.copytree(ref_dir, workdir)
  config = tiny(root, num_steps=50)
  config.token_drop.strategy = "frequency"
  config.optim.learning_rate = 5e-3
  config.data.update(global_batch_size=32, seed=7)
  before = _tree_bytes(workdir)
  with pytest.raises(ValueError) as e:
    loop.train_and_evaluate(config, workdir)
  message = str(e.value)
  for part in ("token_drop.strategy='frequency' but the run in", "started with 'loss_ema'",
               "optim.learning_rate=0.005", "started with 0.001",
               "data.global_batch_size=32", "data.seed=7",
               "--allow_change=data.global_batch_size,data.seed,optim.learning_rate,"
               "token_drop.strategy"):
    assert part in message, part
  assert "train.num_steps" not in message  # how long to train is not what the run is
  assert _tree_bytes(workdir) == before
  config.optim.learning_rate = 1e-3
  with pytest.raises(ValueError, match="--allow_change=data.global_batch_size,data.seed,"
                                       "token_drop.strategy"):
    loop.train_and_evaluate(config, workdir, allow_changes=["optim"])
  with pytest.raises(ValueError, match="--allow_change=optim.lr: no such config field"):
    loop.train_and_evaluate(config, workdir, allow_changes=["optim.lr"])
  assert _tree_bytes(workdir) == before


def test_allowed_changes_are_recorded_and_config_json_keeps_the_start(uninterrupted, tmp_path):
  root, ref_dir, _ = uninterrupted
  workdir = str(tmp_path / "run")
  shutil.copytree(ref_dir, workdir)
  started = open(os.path.join(workdir, "config.json"), "rb").read()
  config = tiny(root, num_steps=50)
  config.optim.learning_rate = 5e-3
  assert loop.train_and_evaluate(config, workdir,
                                 allow_changes=["optim.learning_rate"])["step"] == 50
  assert open(os.path.join(workdir, "config.json"), "rb").read() == started
  with open(os.path.join(workdir, "config_changes.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert records == [{"step": 40, "changes": {"optim.learning_rate": [1e-3, 5e-3],
                                              "train.num_steps": [40, 50]}}]
  # The run's config is now the started one with its changes: what a resume without
  # --config reads, and what the next resume is compared with (no flag needed again).
  from tokendrop_jax.training import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  effective = workdir_lib.read_config(workdir)
  assert effective.optim.learning_rate == 5e-3 and effective.train.num_steps == 50
  assert loop.train_and_evaluate(config, workdir)["step"] == 50
  assert len(open(os.path.join(workdir, "config_changes.jsonl")).readlines()) == 1
