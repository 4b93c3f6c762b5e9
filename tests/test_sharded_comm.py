"""What the sharded steps communicate, read from their compiled programs.

Values can match while a sharded step all-gathers the global batch; only the
compiled HLO shows it. Every step kind of a run is compiled on 8 fake devices
(data=8; fsdp=8 and 2x2x2 in the slow suite), under the logical-axis rules as
the runner runs it, and its collectives are parsed (`training.collectives`): no
drop kind may move an array with the global batch dimension, and none may move
more bytes than the full step (+ the [vocab] loss-EMA reduction; ScTD kinds
also run one full forward, so they get that forward's bytes on top). The
fine-tuning step moves no array of the global batch either.
"""
import flax.linen as nn
import jax
import pytest

from tests.test_config import load
from tokendrop_jax import config_lib, synthetic
from tokendrop_jax.data import glue
from tokendrop_jax.training import aot, collectives, finetune_loop, finetune_step, loop, sharding

BATCH = 24  # a size no other dimension of `tiny` has: 3 rows per device at data=8
HLO_LINES = """
  %all-gather.1 = f32[24,64]{1,0} all-gather(f32[3,64]{1,0} %p), channel_id=1, dimensions={0}
  %ar = (f32[64]{0}, bf16[8,2]{1,0} /*index=1*/) all-reduce(%a, %b), to_apply=%add
  %ags = (f32[3]{0}, f32[24]{0}) all-gather-start(f32[3]{0} %x), dimensions={0}
  %agd = f32[24]{0} all-gather-done((f32[3]{0}, f32[24]{0}) %ags)
  %add = f32[] add(f32[] %x, f32[] %y)
"""


def test_collectives_are_parsed_with_their_shapes():
  found = collectives.collectives(HLO_LINES)
  assert [c.op for c in found] == ["all-gather", "all-reduce", "all-gather"]
  assert found[0].shapes == (("f32", (24, 64)),) and found[0].bytes == 24 * 64 * 4
  assert found[1].bytes == 64 * 4 + 16 * 2  # tuple result, index comment ignored
  assert found[0].has_dim(24) and not found[1].has_dim(24)


def _abstract_batch(config, mesh):
  return aot.abstract_batch(mesh, BATCH, config.data.seq_len, config.data.max_predictions_per_seq)


MESHES = [pytest.param((8, 1, 1), id="data8"),
          pytest.param((1, 8, 1), id="fsdp8", marks=pytest.mark.slow),
          pytest.param((2, 2, 2), id="2x2x2", marks=pytest.mark.slow)]


def _compiled_collectives(fn, mesh, rules, *args):
  """As the runner runs a step: under the mesh and the logical-axis rules (without the
  rules the model's activation constraints do nothing and fsdp=8 gathers the batch)."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    return collectives.collectives(fn.lower(*args).compile().as_text())


# The schedule's four keep counts make nine step kinds (a minute of compiles on the data mesh):
# there the default suite runs the same code paths through loss_ema+sctd's three kinds.
VARIANTS = [pytest.param("loss_ema+sctd", (8, 1, 1), id="loss_ema+sctd-data8"),
            pytest.param("random+layerwise", (8, 1, 1), id="random+layerwise-data8")] + [
    pytest.param(v, m.values[0], id=f"{v}-{m.id}", marks=m.marks)
    for v in ("loss_ema+sctd+schedule", "random+layerwise") for m in MESHES[1:]]


@pytest.mark.parametrize("variant,mesh", VARIANTS)
def test_drop_kinds_communicate_no_more_than_the_full_step(mesh, variant):
  c = load("tiny", variant)
  c.data.global_batch_size = BATCH
  c.mesh.update(data=mesh[0], fsdp=mesh[1], tensor=mesh[2])
  run = loop.build(c, synthetic.SPECIAL_IDS)
  layout = run.layout
  batch = _abstract_batch(c, layout.mesh)
  comm = {kind.name: _compiled_collectives(fn, layout.mesh, layout.rules, layout.abstract, batch)
          for kind, fn in run.train_steps.items()}
  comm["eval"] = _compiled_collectives(run.eval_step, layout.mesh, layout.rules,
                                       layout.abstract.params, batch)
  assert len(comm) >= 3, comm.keys()  # full, eval and at least one drop kind
  full, forward = collectives.total_bytes(comm["full"]), collectives.total_bytes(comm["eval"])
  vocab_reduction = 4 * c.model.vocab_size
  for name, found in comm.items():
    batch_sized = [x for x in found if x.has_dim(BATCH)]
    assert not batch_sized, (name, batch_sized)
    if name.startswith("drop"):
      bound = full + vocab_reduction + (forward if name.endswith("_sctd") else 0)
      assert collectives.total_bytes(found) <= bound, (name, collectives.total_bytes(found), bound)


@pytest.mark.parametrize("mesh", MESHES)
def test_the_fine_tuning_step_moves_no_array_of_the_global_batch(mesh):
  c = load("glue", "sst2")
  c.init_from = ""
  c.model.update(vocab_size=1000, hidden_size=64, num_layers=2, num_heads=2,
                 intermediate_size=128, max_position=64)
  c.data.update(seq_len=64, global_batch_size=BATCH)
  c.mesh.update(data=mesh[0], fsdp=mesh[1], tensor=mesh[2])
  model_cfg = config_lib.model_config(c)
  run = finetune_loop.build(c, glue.get_task("sst2"), model_cfg, num_train=4 * BATCH)
  layout = run.layout
  sh = sharding.batch_sharding(layout.mesh)
  batch = {k: jax.ShapeDtypeStruct((BATCH, 64), "int32", sharding=sh)
           for k in finetune_step.INPUT_KEYS}
  batch["labels"] = jax.ShapeDtypeStruct((BATCH,), "int32", sharding=sh)
  batch["weights"] = jax.ShapeDtypeStruct((BATCH,), "float32", sharding=sh)
  train = _compiled_collectives(run.train_step, layout.mesh, layout.rules, layout.abstract, batch)
  inputs = {k: batch[k] for k in finetune_step.INPUT_KEYS}
  evals = _compiled_collectives(run.eval_step, layout.mesh, layout.rules, layout.abstract.params,
                                inputs)
  assert collectives.total_bytes(train) > 0  # the gradient reduction at least
  # The predictions come back replicated: [BATCH, labels] is the one array of the batch.
  assert [x for x in train if x.has_dim(BATCH)] == []
  assert all(x.shapes == (("f32", (BATCH, 2)),) for x in evals if x.has_dim(BATCH)), evals
