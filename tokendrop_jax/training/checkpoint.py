"""Orbax checkpoints: train state + data-iterator state, for exact resume.

Layout: ``<directory>/<step>/{state,data}``; ``directory`` is normally
``WORKDIR/checkpoints``; ``data`` holds one position per virtual input shard
(`data_state`), so any number of processes can continue it. Restoring takes an abstract state whose leaves carry
the *target* shardings, so a checkpoint written on 8 devices restores on 1 or
4. Every save records a content fingerprint of the state (one uint32 per leaf,
computed on device); a restore that does not reproduce it, or that cannot read
the files, falls back to the previous step, because bit flips in the array
files are otherwise restored silently.
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Iterator, Mapping

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from tokendrop_jax import files
from tokendrop_jax.training import data_state
from tokendrop_jax.training.fingerprint import fingerprint, flat, verify

_FORMAT = 1


# ---------------------------------------------------------------------------
# Shapes, comparable between live trees and orbax metadata.


def _shape(leaf) -> tuple[int, ...]:
  return tuple(getattr(leaf, "shape", np.shape(leaf)))


def check_compatible(saved: Mapping[str, Any], expected: Mapping[str, Any],
                     where: str) -> None:
  """Raises ValueError at the first path whose presence or shape differs."""

  def refuse(what: str):
    raise ValueError(f"The checkpoint in {where} was written by an incompatible config: "
                     f"{what}. Use the matching config or a fresh --workdir; nothing was "
                     "changed.")

  for path, leaf in expected.items():
    if path not in saved:
      refuse(f"{path} is expected with shape {_shape(leaf)} but the checkpoint has no such "
             "entry")
    if _shape(saved[path]) != _shape(leaf):
      refuse(f"{path} has shape {_shape(saved[path])} in the checkpoint but {_shape(leaf)} "
             "in this config")
  for path, leaf in saved.items():
    if path not in expected:
      refuse(f"it holds {path} with shape {_shape(leaf)}, which this config does not have")


# ---------------------------------------------------------------------------


class NoReadableCheckpointError(RuntimeError):
  """Every checkpoint of a workdir failed to restore (nothing was changed)."""


class CheckpointSaveError(OSError):
  """Writing a checkpoint failed (disk full, read-only workdir, ...).

  Raised instead of orbax's own error so that the message names the step, the
  directory and the previous checkpoint, which is left intact.
  """


def _all_processes_ok(ok: bool) -> bool:
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils
  flags = multihost_utils.process_allgather(np.int32(ok))
  return bool(np.all(flags))


class Checkpointer:
  """Orbax CheckpointManager for {state, data iterator}; see module doc.

  All processes must call save/restore (orbax writes collectively).
  """

  def __init__(self, directory, *, save_every: int, keep: int,
               async_save: bool = True, verify: bool = True):
    if save_every <= 0:
      raise ValueError(f"checkpoint.save_every={save_every} must be > 0.")
    if keep < 0:
      raise ValueError(f"checkpoint.keep={keep} must be >= 0 (0 keeps all).")
    self.directory = epath.Path(files.resolve(directory))
    self.save_every = save_every
    self.verify = verify
    self._in_flight: int | None = None  # step of the last save started
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep or None,
        save_interval_steps=1,  # The interval is applied in save().
        enable_async_checkpointing=async_save,
        # A save killed half-way leaves a `<step>.orbax-checkpoint-tmp-*` dir:
        # never listed as a step, removed at the next start.
        cleanup_tmp_directories=True,
        create=True)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": data_state.ShardStateHandler()})

  # -- saving ---------------------------------------------------------------

  def save(self, step: int, state, data_iter: Iterator | None = None,
           force: bool = False, host_state: Mapping[str, Any] | None = None) -> bool:
    """Starts saving `state` (and the iterator position) at `step`.

    `host_state`: small JSON-able values of the host loop (e.g. counters) kept
    in the step's metadata; `host_state(step)` reads them back.

    Skipped (returns False) unless `step` is a multiple of save_every or
    `force`, or if `step` is already saved. Async: returns once device
    buffers are copied to host; call wait() before relying on the files.
    """
    step = int(step)
    if not force and step % self.save_every:
      return False
    if step in self._manager.all_steps():
      return False
    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
      items["data"] = data_state.ShardStateSave(data_iter)
    meta = {"format": _FORMAT, "host_state": dict(host_state or {})}
    if self.verify:
      meta["fingerprint"] = fingerprint(state)
    try:
      self._probe_writable()
      self._in_flight = step
      return self._manager.save(step, args=ocp.args.Composite(**items),
                                force=True, custom_metadata=meta)
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(e, step) from e

  def _probe_writable(self) -> None:
    """Fails fast on a read-only directory: orbax would wait minutes for a step dir."""
    probe = self.directory / f".write_probe.{jax.process_index()}"
    probe.write_text("")
    probe.unlink()

  def _save_error(self, e: BaseException, step: int | None = None) -> CheckpointSaveError:
    """A clear message naming the path and what is still safe on disk."""
    if isinstance(e, CheckpointSaveError):
      return e
    try:
      done = [s for s in self._manager.all_steps() if s != step]
    except Exception:  # pylint: disable=broad-except
      done = []
    what = f"checkpoint step {step}" if step is not None else "a checkpoint"
    where = self.directory / str(step) if step is not None else self.directory
    prev = (f"the previous checkpoint (step {max(done)}) in {self.directory} is intact"
            if done else f"there is no earlier complete checkpoint in {self.directory}")
    return CheckpointSaveError(
        f"could not write {what} to {where}: {type(e).__name__}: {str(e)[:500]}. "
        f"Check free space and permissions of {self.directory}; {prev} and a "
        "restart resumes from it.")

  def wait(self) -> None:
    """Blocks until async saves are committed; raises CheckpointSaveError on failure."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(e, self._in_flight) from e
    self._in_flight = None

  def close(self, after_error: bool = False) -> None:
    """Waits for the last async save, then releases the manager.

    after_error: the caller is already failing; a save error is logged
    instead of raised, so that it does not hide the original one.
    """
    try:
      self.wait()
    except CheckpointSaveError as e:
      if not after_error:
        raise
      logging.error("While stopping, the checkpoint writer also failed: %s", e)
    finally:
      try:
        self._manager.close()  # waits again: the error above, if any, is already reported
      except Exception as e:  # pylint: disable=broad-except
        logging.error("Closing the checkpoint manager of %s failed: %s", self.directory, e)

  # -- restoring ------------------------------------------------------------

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def host_state(self, step: int) -> dict[str, Any]:
    """The `host_state` saved with `step` ({} for checkpoints written without one)."""
    meta = self._manager.metadata(step)
    custom = getattr(meta, "custom_metadata", None) or {}
    return dict(custom.get("host_state") or {})

  def saved_shapes(self, step: int) -> dict[str, Any]:
    """{path: ArrayMetadata} of the state saved at `step` (reads metadata)."""
    meta = self._manager.item_metadata(step)["state"]
    if meta is None:
      raise IOError(f"no state metadata at step {step}")
    return flat(getattr(meta, "tree", meta))

  def restore(self, abstract_state, data_iter: Iterator | None = None,
              step: int | None = None):
    """Restores (state, step) onto the shardings in `abstract_state`.

    `abstract_state`: pytree of jax.ShapeDtypeStruct with `.sharding` set.
    `data_iter` (a fresh `ShardedIterator`) is moved to the saved position in
    place. With step=None the latest readable step is used: unreadable or
    corrupt steps are logged, renamed to `<step>.corrupt` once an older step
    restored, and skipped. Raises ValueError (changing nothing) if the
    checkpoint does not fit `abstract_state`, FileNotFoundError if there is
    no checkpoint at all.
    """
    self.wait()
    steps = self.all_steps()
    if not steps:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    if step is not None:
      if step not in steps:
        raise FileNotFoundError(
            f"No checkpoint for step {step} in {self.directory}; have {steps}.")
      candidates = [step]
    else:
      candidates = steps[::-1]
    expected = flat(abstract_state)
    bad: list[tuple[int, str]] = []
    for s in candidates:
      where = str(self.directory / str(s))
      saved, err = _on_every_process(lambda: self.saved_shapes(s), "metadata read")
      if err is not None:
        self._report_bad(s, where, err, bad)
        continue
      check_compatible(saved, expected, where)  # ValueError propagates.
      if data_iter is not None:
        data_state.check_layout(self.directory / str(s) / "data", data_iter, where)
      state, err = _on_every_process(
          lambda: self._restore_step(s, abstract_state, data_iter, where), "restore")
      if err is not None:
        self._report_bad(s, where, err, bad)
        continue
      if bad:
        logging.warning(
            "Fell back to checkpoint step %d because newer step(s) %s were "
            "unreadable or corrupt; they are renamed to <step>.corrupt.",
            s, [b for b, _ in bad])
        self._quarantine([b for b, _ in bad])
      logging.info("Restored checkpoint step %d from %s.", s, where)
      return state, s
    raise NoReadableCheckpointError(
        f"No readable checkpoint in {self.directory}: "
        + "; ".join(f"step {b}: {e}" for b, e in bad)
        + ". Nothing was changed; move the directory away to start afresh.")

  def _report_bad(self, step, where, err, bad) -> None:
    msg = f"{type(err).__name__}: {str(err)[:300]}" if isinstance(
        err, BaseException) else str(err)
    logging.error("Checkpoint %s is unreadable or corrupt (%s); trying the "
                  "previous step.", where, msg)
    bad.append((step, msg))

  def _restore_step(self, step, abstract_state, data_iter, where):
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      if (self.directory / str(step) / "data").exists():
        items["data"] = data_state.ShardStateRestore(data_iter)
      else:
        logging.warning("%s has no data-iterator state; the iterator starts "
                        "from its beginning.", where)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    state = restored["state"]
    if self.verify:
      meta = self._manager.metadata(step)
      custom = getattr(meta, "custom_metadata", None) or {}
      if "fingerprint" in custom:
        verify(state, custom["fingerprint"], where)
    return state

  def _quarantine(self, steps) -> None:
    if jax.process_index() == 0:
      for s in steps:
        src = self.directory / str(s)
        dst = self.directory / f"{s}.corrupt"
        if dst.exists():
          dst = self.directory / f"{s}.corrupt-{int(time.time())}"
        src.rename(dst)
        logging.warning("Moved corrupt checkpoint %s to %s.", src, dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("tokendrop_checkpoint_quarantine")
    self._manager.reload()


def _on_every_process(fn, what: str):
  """(fn(), None) if fn succeeded on every process, else (None, the error).

  All processes take the same branch, so none waits alone in a collective.
  """
  try:
    value, err = fn(), None
  except Exception as e:  # pylint: disable=broad-except
    value, err = None, e
  if _all_processes_ok(err is None):
    return value, None
  return None, err if err is not None else f"{what} failed on another process"


# ---------------------------------------------------------------------------
# Params-only export (fine-tuning, Hugging Face conversion).


def save_params(path, params, *, overwrite: bool = False) -> str:
  """Writes params (boxes removed) to `path` with orbax; all processes call it."""
  path = epath.Path(files.resolve(path))  # not .absolute(): it mangles gs:// URLs
  if path.exists() and not overwrite:
    raise FileExistsError(
        f"{path} already exists; pass overwrite=True to replace it.")
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(path, nn.meta.unbox(params), force=overwrite)
  ckptr.wait_until_finished()
  ckptr.close()
  return str(path)


def load_params(path, abstract=None):
  """Reads params written by save_params.

  `abstract`: pytree of ShapeDtypeStruct with target shardings (shapes are
  checked); None restores every array onto the first local device.
  """
  path = epath.Path(files.resolve(path))
  if not path.exists():
    raise FileNotFoundError(f"No params export at {path}.")
  ckptr = ocp.StandardCheckpointer()
  meta = ckptr.metadata(path).item_metadata
  saved_tree = getattr(meta, "tree", meta)
  if abstract is None:
    dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=dev),
        saved_tree)
  else:
    abstract = nn.meta.unbox(abstract)
    check_compatible(flat(saved_tree), flat(abstract), str(path))
  params = ckptr.restore(path, abstract)
  ckptr.close()
  return params


@contextlib.contextmanager
def closing(ckpt: Checkpointer, *others):
  """Closes `ckpt`, then `others` (metrics writers), however the block ends.

  On success, the last async save is awaited and its failure raised
  (CheckpointSaveError). On error, a save failure is only logged, so the
  error that stopped the run is the one the user sees; `others` are closed
  either way.
  """
  try:
    yield
  except BaseException:
    try:
      ckpt.close(after_error=True)
    finally:
      for o in others:
        o.close()
    raise
  try:
    ckpt.close()
  finally:
    for o in others:
      o.close()
