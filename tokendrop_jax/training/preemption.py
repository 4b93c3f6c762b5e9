"""Stop cleanly on SIGTERM (TPU preemption, Slurm time limit, `kill`).

The handler only sets a flag; the train loop asks ``should_stop(step)`` once per
step, saves a checkpoint and exits. With several processes the answer must be
the same on all of them (otherwise one process leaves a collective and the
others hang), so processes agree through the JAX coordination service every
``sync_every`` steps: a host-side barrier that does not wait for the device.
"""
from __future__ import annotations

import logging
import signal
import threading

import jax
import numpy as np


def _coordination_client():
  try:
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
    return distributed.global_state.client
  except Exception:  # pylint: disable=broad-except
    return None


class PreemptionGuard:
  """Context manager: SIGTERM (and optionally SIGINT) -> graceful stop.

  Usage::

    with PreemptionGuard() as guard:
      for step in ...:
        ...
        if guard.should_stop(step):
          ckpt.save(step, state, it, force=True); break
  """

  def __init__(self, *, sigint: bool = False, sync_every: int = 10,
               timeout_s: float = 300.0):
    if sync_every <= 0:
      raise ValueError(f"sync_every={sync_every} must be > 0.")
    self.signals = [signal.SIGTERM] + ([signal.SIGINT] if sigint else [])
    self.sync_every = sync_every
    self.timeout_ms = int(timeout_s * 1000)
    self._flag = threading.Event()
    self._previous: dict[int, object] = {}
    self._last_sync: int | None = None
    self._stop_agreed = False
    self.received: int | None = None

  def __enter__(self) -> "PreemptionGuard":
    if threading.current_thread() is not threading.main_thread():
      logging.warning("PreemptionGuard: not the main thread; no signal "
                      "handlers installed (only request_stop() works).")
      return self
    for sig in self.signals:
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()

  def _handle(self, signum, frame) -> None:  # pylint: disable=unused-argument
    # Only set a flag: the handler may run between any two bytecodes.
    self.received = signum
    self._flag.set()

  def request_stop(self) -> None:
    """Same as receiving the signal (for tests or a stop file watcher)."""
    self._flag.set()

  @property
  def stop_requested(self) -> bool:
    """This process's flag, without agreement with the others."""
    return self._flag.is_set()

  def should_stop(self, step: int) -> bool:
    """True once a stop was requested, on all processes at the same step.

    Single process: the local flag. Several processes: checked every
    `sync_every` steps (all processes call with the same step sequence).
    """
    if self._stop_agreed:
      return True
    if jax.process_count() == 1:
      self._stop_agreed = self._flag.is_set()
      if self._stop_agreed:
        logging.warning("Stop requested (signal %s) at step %d.",
                        self.received, step)
      return self._stop_agreed
    if step % self.sync_every or step == self._last_sync:
      return False
    self._last_sync = step
    self._stop_agreed = self._agree(step, self._flag.is_set())
    if self._stop_agreed:
      logging.warning("Stop agreed by all processes at step %d (local signal "
                      "%s).", step, self.received)
    return self._stop_agreed

  def _agree(self, step: int, local: bool) -> bool:
    client = _coordination_client()
    if client is None:  # Fall back to a device all-gather (waits on device).
      from jax.experimental import multihost_utils
      flags = multihost_utils.process_allgather(np.int32(local))
      return bool(np.any(flags))
    # Publish, barrier, read: after the barrier every process sees the same
    # set of keys, hence takes the same decision.
    prefix = f"tokendrop/preempt/{step}/"
    client.key_value_set(prefix + str(jax.process_index()), "1" if local else "0")
    client.wait_at_barrier(f"tokendrop_preempt_{step}", self.timeout_ms)
    values = client.key_value_dir_get(prefix)
    decision = any(v == "1" for _, v in values)
    # Each process deletes its own key once all have read (next barrier
    # proves that); keeping one step of keys around is harmless.
    prev = step - self.sync_every
    if prev >= 0:
      try:
        client.key_value_delete(f"tokendrop/preempt/{prev}/"
                                f"{jax.process_index()}")
      except Exception:  # pylint: disable=broad-except
        pass
    return decision
