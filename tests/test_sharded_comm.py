"""What the sharded steps communicate, read from their compiled programs.

Values can match while a sharded step all-gathers the global batch; only the
compiled HLO shows it. Every step kind of a run is compiled on 8 fake devices
and its collectives are parsed (`training.collectives`): no drop kind may move
an array with the global batch dimension, and none may move more bytes than
the full step (+ the [vocab] loss-EMA reduction; ScTD kinds also run one full
forward, so they get that forward's bytes on top).
"""
import jax
import pytest

from tests.test_config import load
from tokendrop_jax import synthetic
from tokendrop_jax.training import collectives, loop, sharding

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
  b, s, p = BATCH, config.data.seq_len, config.data.max_predictions_per_seq
  sh = sharding.batch_sharding(mesh)
  return {k: jax.ShapeDtypeStruct(shape, "float32" if k == "masked_lm_weights" else "int32",
                                  sharding=sh)
          for k, shape in (("input_ids", (b, s)), ("input_mask", (b, s)),
                           ("token_type_ids", (b, s)), ("masked_lm_positions", (b, p)),
                           ("masked_lm_ids", (b, p)), ("masked_lm_weights", (b, p)))}


@pytest.mark.parametrize("mesh", [(8, 1, 1), (2, 2, 2)], ids=["data8", "2x2x2"])
@pytest.mark.parametrize("variant", ["loss_ema+sctd+schedule", "random+layerwise"])
def test_drop_kinds_communicate_no_more_than_the_full_step(mesh, variant):
  c = load("tiny", variant)
  c.data.global_batch_size = BATCH
  c.mesh.update(data=mesh[0], fsdp=mesh[1], tensor=mesh[2])
  run = loop.build(c, synthetic.SPECIAL_IDS)
  batch = _abstract_batch(c, run.layout.mesh)
  with jax.set_mesh(run.layout.mesh):
    comm = {kind.name: collectives.collectives(
        fn.lower(run.layout.abstract, batch).compile().as_text())
            for kind, fn in run.train_steps.items()}
    comm["eval"] = collectives.collectives(run.eval_step.lower(
        run.layout.abstract.params, batch).compile().as_text())
  assert len(comm) >= 3, comm.keys()  # full, eval and at least one drop kind
  full, forward = collectives.total_bytes(comm["full"]), collectives.total_bytes(comm["eval"])
  vocab_reduction = 4 * c.model.vocab_size
  for name, found in comm.items():
    batch_sized = [x for x in found if x.has_dim(BATCH)]
    assert not batch_sized, (name, batch_sized)
    if name.startswith("drop"):
      bound = full + vocab_reduction + (forward if name.endswith("_sctd") else 0)
      assert collectives.total_bytes(found) <= bound, (name, collectives.total_bytes(found), bound)
