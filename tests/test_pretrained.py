"""Reading a pretraining workdir: params-only restore, step choice, bad layouts."""
import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tokendrop_jax import config_lib
from tokendrop_jax.data import demo_corpus
from tokendrop_jax.data import tokenizer as tokenizer_lib
from tokendrop_jax.model.bert import BertForPretraining
from tokendrop_jax.training import pretrained
from tokendrop_jax.training import workdir as workdir_lib
from tokendrop_jax.training.checkpoint import Checkpointer
from tokendrop_jax.training.state import make_state_init

# Text the tokenizer sees, plus characters that NFKC changes.
_EXTRA_LINES = ["Café naïve über Straße, 12345 and ½ of ﬁve Ｆｕｌｌ ｗｉｄｔｈ."] * 5


def tiny_config(vocab_size: int):
  c = config_lib.base_config()
  c.name = "export_test"
  # Large init range: a wrong transpose or a missed bias shows in the logits.
  c.model.update(vocab_size=vocab_size, hidden_size=32, num_layers=4, num_heads=4,
                 intermediate_size=64, max_position=48, initializer_range=0.2)
  c.token_drop.keep_tokens = 8
  c.data.update(seq_len=16, max_predictions_per_seq=4, global_batch_size=2)
  return c


def _perturbed(params, seed):
  """Every param (LayerNorm, biases too) nonzero and random (numpy: no compiles)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda x: (np.asarray(x) + 0.2 * rng.standard_normal(x.shape)).astype(x.dtype), params)


def make_pretrain_workdir(workdir, steps=(3, 5), model_type="unigram"):
  """A workdir as the train main writes it -> {step: numpy params}."""
  os.makedirs(workdir, exist_ok=True)
  text = os.path.join(workdir, "text.txt")
  lines = [s for d in demo_corpus.demo_documents(max_bytes=40_000) for s in d] + _EXTRA_LINES
  with open(text, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  tok_path = tokenizer_lib.train_tokenizer(text, 300, os.path.join(workdir, "tokenizer"),
                                           model_type=model_type, num_threads=1)
  os.remove(text)
  tok = tokenizer_lib.Tokenizer(tok_path)
  config = tiny_config(tok.vocab_size)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort())
  model = BertForPretraining(config_lib.model_config(config))
  tx = optax.adamw(1e-3)
  init = make_state_init(model, tx, config.data.seq_len, config.data.max_predictions_per_seq)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), save_every=1, keep=0,
                      async_save=False)
  state = jax.jit(lambda r: nn.unbox(init(r, jnp.full((tok.vocab_size,), 10.0))))(
      jax.random.key(0))
  saved = {}
  for i, step in enumerate(steps):
    state = state.replace(step=np.int32(step), params=_perturbed(state.params, seed=i))
    ckpt.save(step, state, force=True)
    saved[step] = jax.tree.map(np.asarray, state.params)
  ckpt.close()
  return saved


_SHARED = {}


def shared_pretrain_workdir(tmp_path_factory):
  """(workdir, {step: params}) built once per session; tests must not modify it."""
  if "run" not in _SHARED:
    d = str(tmp_path_factory.mktemp("pretrain") / "run")
    _SHARED["run"] = d, make_pretrain_workdir(d)
  return _SHARED["run"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return shared_pretrain_workdir(tmp_path_factory)


def _assert_tree_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert isinstance(x, np.ndarray)
    np.testing.assert_array_equal(x, y)


def test_latest_step_params_only(workdir):
  d, saved = workdir
  params, config, step = pretrained.load_pretrained(d)
  assert step == 5
  assert set(params) == {"bert", "mlm"}
  _assert_tree_equal(params, saved[5])
  assert config.model.hidden_size == 32 and config.name == "export_test"
  assert workdir_lib.tokenizer_path(d) == os.path.join(d, "tokenizer.model")


def test_given_step(workdir):
  d, saved = workdir
  params, _, step = pretrained.load_pretrained(d, step=3)
  assert step == 3
  _assert_tree_equal(params, saved[3])
  with pytest.raises(FileNotFoundError, match=r"step 4 .*checkpoints.*\[3, 5\]"):
    pretrained.load_pretrained(d, step=4)


def test_quarantined_and_temp_dirs_are_not_steps(workdir, tmp_path):
  d, _ = workdir
  copy = str(tmp_path / "run")
  shutil.copytree(d, copy)
  os.rename(os.path.join(copy, "checkpoints", "5"), os.path.join(copy, "checkpoints", "5.corrupt"))
  os.makedirs(os.path.join(copy, "checkpoints", "7.orbax-checkpoint-tmp-1"))
  assert workdir_lib.checkpoint_steps(copy) == [3]
  assert pretrained.load_pretrained(copy)[2] == 3


def test_corrupt_latest_falls_back(workdir, tmp_path):
  """A step whose params do not match the save-time fingerprint is skipped."""
  d, saved = workdir
  copy = str(tmp_path / "run")
  shutil.copytree(d, copy)
  meta_file = os.path.join(copy, "checkpoints", "5", "_CHECKPOINT_METADATA")
  with open(meta_file) as f:
    meta = json.load(f)
  fp = meta["custom_metadata"]["fingerprint"]
  fp["params/bert/layer_1/output/kernel"][0] ^= 1  # as if one bit of the file flipped
  with open(meta_file, "w") as f:
    json.dump(meta, f)
  params, _, step = pretrained.load_pretrained(copy)
  assert step == 3
  _assert_tree_equal(params, saved[3])
  with pytest.raises(IOError, match=r"checkpoints.5.state: params/bert/layer_1/output/kernel"):
    pretrained.load_pretrained(copy, step=5)


def test_bad_layouts_name_the_path(workdir, tmp_path):
  d, _ = workdir
  missing = str(tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match="nope"):
    pretrained.load_pretrained(missing)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match=r"config\.json.*empty"):
    pretrained.load_pretrained(str(empty))
  with pytest.raises(FileNotFoundError, match=r"empty.*tokenizer\.model"):
    workdir_lib.tokenizer_path(str(empty))
  shutil.copy(os.path.join(d, "config.json"), empty / "config.json")
  with pytest.raises(FileNotFoundError, match=r"No checkpoint in .*empty.checkpoints"):
    pretrained.load_pretrained(str(empty))
  (empty / "checkpoints" / "9").mkdir(parents=True)
  with pytest.raises(ValueError, match=r"checkpoints.9 has no 'state'"):
    pretrained.load_pretrained(str(empty))
  (empty / "config.json").write_text("{not json")
  with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
    pretrained.load_pretrained(str(empty))
  (empty / "config.json").write_text(json.dumps({"a": 1}))
  with pytest.raises(ValueError, match="no 'model' section"):
    workdir_lib.read_config(str(empty))
