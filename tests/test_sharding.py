"""Mesh construction, logical-axis rules (golden shardings) and global batches."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from tokendrop_jax.training import sharding


def test_make_mesh_fill_and_auto_axes():
  mesh = sharding.make_mesh(-1, 2, 2)
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  assert dict(sharding.make_mesh(1, -1, 1).shape)["fsdp"] == 8
  small = sharding.make_mesh(-1, 1, 1, devices=jax.devices()[:4])
  assert small.devices.size == 4


@pytest.mark.parametrize("sizes, field", [
    ((3, 1, 1), "mesh.data"),
    ((2, 2, 4), "mesh.tensor"),
    ((-1, -1, 1), "mesh.fsdp"),
    ((0, 1, 1), "mesh.data"),
    ((1, -2, 1), "mesh.fsdp"),
    ((-1, 3, 1), "mesh.fsdp"),
])
def test_make_mesh_errors_name_the_field(sizes, field):
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    sharding.make_mesh(*sizes)


def test_rules_from_config_validates():
  rules = sharding.rules_from_config([["batch", ["data", "fsdp"]],
                                      ["embed", None], ["mlp", "tensor"]])
  assert rules == (("batch", ("data", "fsdp")), ("embed", None),
                   ("mlp", "tensor"))
  assert sharding.rules_from_config(None) == sharding.DEFAULT_RULES
  with pytest.raises(ValueError, match="unknown logical axis 'hidden'"):
    sharding.rules_from_config([("hidden", "fsdp")])
  with pytest.raises(ValueError, match="unknown mesh axis 'model'"):
    sharding.rules_from_config([("mlp", "model")])
  with pytest.raises(ValueError, match=r"mesh\.rules\[0\]"):
    sharding.rules_from_config([("mlp",)])


class _Tiny(nn.Module):
  """Embedding + MLP with logical axis names, like the BERT blocks."""

  @nn.compact
  def __call__(self, ids):
    emb = self.param("embedding", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), ("vocab", "embed")), (16, 8))
    x = emb[ids]
    x = nn.Dense(32, kernel_init=nn.with_logical_partitioning(
        nn.initializers.lecun_normal(), ("embed", "mlp")),
                 bias_init=nn.with_logical_partitioning(
                     nn.initializers.zeros, ("mlp",)), name="up")(x)
    x = nn.Dense(8, kernel_init=nn.with_logical_partitioning(
        nn.initializers.lecun_normal(), ("mlp", "embed")), name="down")(x)
    odd = self.param("odd", nn.with_logical_partitioning(
        nn.initializers.zeros, ("vocab",)), (7,))  # 7 does not divide 2.
    return x + odd[0]


def test_param_shardings_golden_and_state():
  mesh = sharding.make_mesh(2, 2, 2)
  model = _Tiny()
  ids = jnp.zeros((4, 3), jnp.int32)
  abstract = jax.eval_shape(model.init, jax.random.key(0), ids)
  specs = jax.tree.map(lambda s: s.spec,
                       sharding.param_shardings(abstract, mesh))["params"]
  assert specs == {
      "embedding": P("tensor", "fsdp"),
      "up": {"kernel": P("fsdp", "tensor"), "bias": P("tensor")},
      "down": {"kernel": P("tensor", "fsdp"), "bias": P()},  # bias unboxed
      "odd": P(),
  }

  # A whole state: optax moments mirror the boxes, other leaves replicate.
  tx = optax.adamw(1e-3)

  def init_state(rng):
    params = model.init(rng, ids)
    return {"step": jnp.int32(0), "params": params,
            "opt_state": tx.init(params), "importance": jnp.full((16,), 10.0)}

  abstract_state = jax.eval_shape(init_state, jax.random.key(0))
  shardings = sharding.param_shardings(abstract_state, mesh)
  adam = shardings["opt_state"][0]
  assert adam.mu["params"]["up"]["kernel"].spec == P("fsdp", "tensor")
  assert adam.count.spec == P()
  assert shardings["importance"].spec == P()
  assert shardings["step"].spec == P()
  state = jax.jit(lambda r: nn.unbox(init_state(r)),
                  out_shardings=shardings)(jax.random.key(0))
  kernel = state["params"]["params"]["up"]["kernel"]
  assert kernel.sharding.spec == P("fsdp", "tensor")
  assert kernel.addressable_shards[0].data.shape == (4, 16)
  # Same values as an unsharded init.
  ref = nn.unbox(init_state(jax.random.key(0)))
  np.testing.assert_array_equal(np.asarray(kernel),
                                ref["params"]["params"]["up"]["kernel"])


def test_maybe_initialize_distributed_triggers():
  reason = sharding._distributed_reason  # pylint: disable=protected-access
  assert reason({}) is None
  assert sharding.maybe_initialize_distributed(env={}) is False
  assert reason({"JAX_COORDINATOR_ADDRESS": "h:1234"})
  slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]",
           "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
  assert reason({**slurm, "SLURM_NTASKS": "1"}) is None
  assert reason({**slurm, "SLURM_NTASKS": "2"})
  assert reason({"TPU_WORKER_HOSTNAMES": "a,b"})
  assert reason({"TPU_WORKER_HOSTNAMES": "a"}) is None
  assert reason({"TOKENDROP_DISTRIBUTED": "0",
                 "JAX_COORDINATOR_ADDRESS": "h:1"}) is None
  assert reason({"TOKENDROP_DISTRIBUTED": "1"})
