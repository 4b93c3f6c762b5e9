"""Device mesh, logical-axis rules and array placement.

One mesh with axes ``('data', 'fsdp', 'tensor')`` serves every topology: 1 CPU,
8 fake CPU devices, a GPU node, a TPU pod. Parameters carry logical axis names
(``nn.with_logical_partitioning``); a rules table maps them to mesh axes, so
data parallel, FSDP and tensor parallel are config changes, not code changes.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tokendrop_jax.partitioning import DEFAULT_RULES, MESH_AXES
from tokendrop_jax.partitioning import rules_from_config


def make_mesh(data: int, fsdp: int, tensor: int, devices=None,
              device_order: str = "topology") -> Mesh:
  """Builds the ('data', 'fsdp', 'tensor') mesh with Auto axis types.

  One size may be -1: it takes the devices left over by the other two.
  `device_order`: 'topology' (physical placement, `_device_array`) or 'list'.
  Raises ValueError naming the offending config field (``mesh.data`` ...).
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
  for name, size in sizes.items():
    if not isinstance(size, (int, np.integer)) or size == 0 or size < -1:
      raise ValueError(
          f"mesh.{name}={size!r}: each mesh size must be a positive integer "
          "or -1 (fill with the remaining devices).")
  fill = [name for name, size in sizes.items() if size == -1]
  if len(fill) > 1:
    raise ValueError(
        f"mesh.{fill[1]}=-1: only one mesh axis may be -1, got "
        + ", ".join(f"mesh.{f}=-1" for f in fill) + ".")
  if fill:
    known = math.prod(s for s in sizes.values() if s != -1)
    if n % known:
      bad = next((k for k, s in sizes.items() if s not in (-1, 1)), fill[0])
      raise ValueError(
          f"mesh.{bad}={sizes[bad]}: the fixed mesh sizes multiply to {known}, "
          f"which does not divide the {n} devices.")
    sizes[fill[0]] = n // known
  total = math.prod(sizes.values())
  if total != n:
    # Name the largest axis that is not 1: the likeliest typo.
    bad = max(sizes, key=lambda k: (sizes[k] != 1, sizes[k]))
    raise ValueError(
        f"mesh.{bad}={sizes[bad]}: mesh sizes data={sizes['data']} x "
        f"fsdp={sizes['fsdp']} x tensor={sizes['tensor']} = {total} "
        f"do not match the {n} devices.")
  shape = tuple(sizes[a] for a in MESH_AXES)
  dev_array = (np.asarray(devices, dtype=object).reshape(shape) if device_order == "list"
               else _device_array(shape, devices))
  # Auto axes: jax 0.10's make_mesh defaults to Explicit, which breaks
  # ordinary indexing of sharded arrays.
  return Mesh(dev_array, MESH_AXES,
              axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def _device_array(shape: tuple[int, ...], devices: list) -> np.ndarray:
  """Devices arranged as `shape` along the physical topology (TPU torus, GPU node).

  Devices of several TPU slices (multi-slice) split the 'data' axis across slices:
  data parallelism is the only traffic that crosses the data-center network.
  """
  from jax.experimental import mesh_utils  # pylint: disable=import-outside-toplevel
  slices = sorted({getattr(d, "slice_index", None) or 0 for d in devices})
  if len(slices) > 1:
    n = len(slices)
    if shape[0] % n:
      raise ValueError(f"mesh.data={shape[0]}: the devices span {n} TPU slices, and data "
                       f"parallelism is what crosses between slices, so mesh.data must be a "
                       f"multiple of {n}")
    return mesh_utils.create_hybrid_device_mesh((shape[0] // n,) + tuple(shape[1:]),
                                                (n,) + (1,) * (len(shape) - 1), devices=devices)
  try:
    return mesh_utils.create_device_mesh(shape, devices=devices)
  except Exception as e:  # pylint: disable=broad-except
    if devices[0].platform == "cpu":  # a CPU has no topology to lose
      return np.asarray(devices, dtype=object).reshape(shape)
    raise ValueError(
        f"mesh {dict(zip(MESH_AXES, shape))}: jax's topology-aware layout of the "
        f"{len(devices)} {devices[0].device_kind} devices failed ({e}). Choose mesh sizes "
        "that follow the slice's shape, or set --config.mesh.device_order=list to lay the "
        "devices out in list order (mesh neighbours may then be far apart on the "
        "interconnect).") from None


def check_batch(mesh: Mesh, field: str, size: int, microbatches: int = 1) -> None:
  """ValueError naming `field` unless `size` splits over the batch shards.

  The number of processes does not matter: each reads the rows its devices
  hold (`host_rows`).
  """
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if size % (shards * microbatches):
    accum = f" (x optim.grad_accum_steps={microbatches})" if microbatches > 1 else ""
    raise ValueError(f"{field}={size} must divide into mesh.data*mesh.fsdp={shards} "
                     f"shards{accum}")


def make_checked_mesh(config, devices=None) -> Mesh:
  """The mesh of `config` on `devices`; ValueError naming the field if a batch does not fit."""
  mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, devices,
                   config.mesh.get("device_order", "topology"))
  data = config.data
  check_batch(mesh, "data.global_batch_size", data.global_batch_size,
              config.optim.grad_accum_steps)
  if data.get("num_shards") and data.global_batch_size % data.num_shards:
    raise ValueError(f"data.global_batch_size={data.global_batch_size} must divide into "
                     f"data.num_shards={data.num_shards} virtual input shards")
  if data.get("eval_batch_size"):
    check_batch(mesh, "data.eval_batch_size", data.eval_batch_size)
  return mesh


def _mesh_axis_size(mesh: Mesh, axes) -> int:
  if axes is None:
    return 1
  if isinstance(axes, str):
    axes = (axes,)
  return math.prod(mesh.shape[a] for a in axes)


def _leaf_spec(leaf, mesh: Mesh, rules, warned: set) -> PartitionSpec:
  """Mesh PartitionSpec for one leaf; dims that do not divide are replicated."""
  if isinstance(leaf, nn.LogicallyPartitioned):
    logical = leaf.get_partition_spec()
    spec = nn.logical_to_mesh_axes(logical, rules)
    shape = getattr(leaf.value, "shape", None)
  elif isinstance(leaf, nn.Partitioned):  # Already in mesh axes.
    spec = leaf.get_partition_spec()
    shape = getattr(leaf.value, "shape", None)
  else:
    return PartitionSpec()  # Step counters, importance vector, rng ...
  if shape is None:
    return spec
  entries = list(spec) + [None] * (len(shape) - len(spec))
  for d, axes in enumerate(entries):
    if axes is not None and shape[d] % _mesh_axis_size(mesh, axes):
      if (shape, d) not in warned:  # Optimizer moments repeat each param.
        warned.add((shape, d))
        logging.warning(
            "Replicating dim %d (size %d) of %s-sharded %s parameters: mesh "
            "axes %s do not divide it.", d, shape[d], tuple(spec), shape, axes)
      entries[d] = None
  while entries and entries[-1] is None:
    entries.pop()
  return PartitionSpec(*entries)


def param_shardings(tree: Any, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
  """NamedSharding pytree for params (or a whole train state) with logical boxes.

  ``tree`` is typically ``jax.eval_shape(model.init, ...)`` output, or a train
  state whose params and optimizer moments hold ``nn.LogicallyPartitioned``
  boxes. The result has the structure of ``nn.unbox(tree)``; unboxed leaves
  (step, rng, importance vector) are replicated.
  """
  rules = rules_from_config(rules) if rules is not DEFAULT_RULES else rules
  warned = set()
  return jax.tree.map(
      lambda x: NamedSharding(mesh, _leaf_spec(x, mesh, rules, warned)),
      tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def logical_sharding(mesh: Mesh, logical_axes: Sequence[str | None],
                     rules=DEFAULT_RULES) -> NamedSharding:
  """NamedSharding for an activation given its logical axis names."""
  return NamedSharding(mesh, nn.logical_to_mesh_axes(tuple(logical_axes), rules))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batch dimension split over ('data', 'fsdp'); other dims replicated."""
  return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


# Env vars that mean "this is one of several processes". JAX itself reads
# JAX_COORDINATOR_ADDRESS and JAX_LOCAL_DEVICE_IDS; we add JAX_NUM_PROCESSES
# and JAX_PROCESS_ID so a launcher can set all four explicitly.
_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS",
               "SLURM_PROCID", "SLURM_LOCALID")


def _distributed_reason(env: Mapping[str, str]) -> str | None:
  flag = env.get("TOKENDROP_DISTRIBUTED", "").strip().lower()
  if flag in ("0", "false", "no"):
    return None
  if flag in ("1", "true", "yes"):
    return "TOKENDROP_DISTRIBUTED=1"
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return "JAX_COORDINATOR_ADDRESS"
  if all(v in env for v in _SLURM_VARS) and int(env["SLURM_NTASKS"]) > 1:
    return "Slurm step with SLURM_NTASKS=%s" % env["SLURM_NTASKS"]
  hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES")
  if hosts and len(hosts.split(",")) > 1:
    return "multi-host TPU (TPU_WORKER_HOSTNAMES)"
  return None


def maybe_initialize_distributed(env: Mapping[str, str] | None = None) -> bool:
  """Calls ``jax.distributed.initialize()`` only for multi-process launches.

  Triggers (first match wins):
    * ``TOKENDROP_DISTRIBUTED=1`` forces it (auto-detect: TPU pod, Slurm, ...);
      ``TOKENDROP_DISTRIBUTED=0`` disables it.
    * ``JAX_COORDINATOR_ADDRESS`` set; with ``JAX_NUM_PROCESSES``,
      ``JAX_PROCESS_ID`` and optionally ``JAX_LOCAL_DEVICE_IDS``.
    * a Slurm ``srun`` step with ``SLURM_NTASKS > 1`` (JAX's Slurm detection).
    * ``TPU_WORKER_HOSTNAMES`` / ``TPU_PROCESS_ADDRESSES`` listing several hosts.
  Otherwise it is a no-op (one process: nothing to coordinate). Must run
  before anything touches the JAX backend. Returns True if it initialized.
  """
  env = os.environ if env is None else env
  reason = _distributed_reason(env)
  if reason is None:
    return False
  kwargs = {}
  if env.get("JAX_COORDINATOR_ADDRESS"):
    kwargs["coordinator_address"] = env["JAX_COORDINATOR_ADDRESS"]
  for key, arg in (("JAX_NUM_PROCESSES", "num_processes"),
                   ("JAX_PROCESS_ID", "process_id")):
    if env.get(key):
      try:
        kwargs[arg] = int(env[key])
      except ValueError:
        raise ValueError(f"{key}={env[key]!r} is not an integer.") from None
  logging.info("jax.distributed.initialize(%s) because of %s.", kwargs, reason)
  jax.distributed.initialize(**kwargs)
  logging.info("Process %d of %d, %d local / %d global devices.",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return True
