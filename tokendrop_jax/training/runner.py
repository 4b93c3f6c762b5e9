"""The host loop that pretraining and fine-tuning both drive.

A job (`Job`) says what differs: its step functions, its batches, when and
how it evaluates, what it logs beside the step metrics. The loop does the
rest, the same way for both:

- The host never waits for the device on the hot path: the metrics of step n
  are fetched while step n+1 runs. Before an evaluation, a checkpoint or a
  stop they are fetched at once, so that a NaN is never evaluated or saved.
- A non-finite loss or gradient norm ends the run with `NonFiniteLossError`
  (`train.nan_policy=stop`; the last good checkpoint stays), or its update
  is skipped on device (`skip`) and counted.
- SIGTERM (preemption) saves a checkpoint and exits.
- **Step time** is the wall time of the steps in a logging window over their
  number, checkpoint saves included (the run pays for them) and evaluation
  excluded (it is reported on its own). `train_time_s` adds up the same time.
  The skipped-step count and `train_time_s` travel in each checkpoint, so a
  resumed run continues both.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import numpy as np

from tokendrop_jax.training import checkpoint, preemption
from tokendrop_jax.training import metrics as metrics_lib


class NonFiniteLossError(RuntimeError):
  """The loss went NaN/Inf; the last good checkpoint is kept."""


@dataclasses.dataclass
class Job:
  """What a training hands to the loop."""
  num_steps: int
  log_every: int
  checkpoint_every: int
  nan_policy: str                              # "stop" | "skip"
  tokens_per_step: int
  step_fn: Callable[[int], tuple[Any, Callable]]  # step -> (kind, jitted (state, batch) -> (state, metrics))
  batch: Callable[[int], Any]                  # step -> the global batch of that step
  eval_due: Callable[[int], bool]              # after `step` steps
  evaluate: Callable[[int, Any], None]         # (step, state): evaluates, writes, prints
  data_iter: Any = None                        # saved with each checkpoint (grain iterator)
  extra_scalars: Callable[[int, Any, float], dict] = lambda step, kind, step_time_s: {}
  line_prefix: Callable[[int], str] = lambda step: ""
  nan_hint: str = "Lower optim.learning_rate, or set train.nan_policy=skip to skip bad batches."


@dataclasses.dataclass
class Result:
  step: int            # steps taken in all (== num_steps unless stopped by a signal)
  state: Any
  train_time_s: float
  skipped_steps: int   # non-finite updates skipped (nan_policy=skip), resumes included


def restore_or_init(ckpt: checkpoint.Checkpointer, abstract_state, init: Callable[[], Any],
                    data_iter=None) -> tuple[Any, int, dict]:
  """(state, step, host state) from the latest readable checkpoint, or from `init()`."""
  if ckpt.latest_step() is None:
    return init(), 0, {}
  state, step = ckpt.restore(abstract_state, data_iter)
  logging.info("Resumed from step %d", step)
  if jax.process_index() == 0:
    print(f"resumed from checkpoint step {step} in {ckpt.directory}", flush=True)
  return state, step, ckpt.host_state(step)


def run(job: Job, state, start: int, ckpt: checkpoint.Checkpointer,
        writer: metrics_lib.MetricsWriter, mesh, rules,
        host_state: Optional[dict] = None) -> Result:
  """Runs `job` from step `start` to its end (or a stop signal) -> Result."""
  is_main = jax.process_index() == 0
  host_state = host_state or {}
  skipped = int(host_state.get("skipped_steps", 0))
  train_time = float(host_state.get("train_time_s", 0.0))  # up to the current window
  window = {"t": time.perf_counter(), "step": start}  # the current logging window
  t_start = window["t"]

  def flush(pending) -> None:
    """Fetches a finished step's metrics; stops or counts on NaN; logs on log steps."""
    nonlocal skipped, train_time
    step, kind, device_metrics = pending
    m = jax.device_get(device_metrics)
    finite = np.isfinite(m["loss"]) and np.isfinite(m.get("grad_norm", 0.0))
    if not finite and job.nan_policy == "stop":
      # A NaN gradient with a finite loss would save NaN params at this step.
      raise NonFiniteLossError(
          f"loss is {m['loss']} (gradient norm {m.get('grad_norm')}) at step {step}; stopping. "
          f"The last good checkpoint (step {ckpt.latest_step()}) is kept in {ckpt.directory}. "
          + job.nan_hint)
    if m.get("skipped", 0.0) > 0:
      skipped += 1
      logging.warning("Non-finite loss/gradient at step %d: update skipped (%d so far).",
                      step, skipped)
      if is_main:
        print(f"step {step}: non-finite loss/gradient, update skipped "
              f"({skipped} skipped so far)", flush=True)
    if step % job.log_every == 0 or step == job.num_steps:
      now = time.perf_counter()
      step_time = (now - window["t"]) / max(step - window["step"], 1)
      train_time += now - window["t"]
      out = {k: float(v) for k, v in m.items()}
      out.update(step_time_s=step_time, tokens_per_s=job.tokens_per_step / step_time,
                 train_time_s=train_time)
      out.update(job.extra_scalars(step, kind, step_time))
      writer.write(step, out)
      if is_main:
        print(job.line_prefix(step) + metrics_lib.format_progress(
            step, job.num_steps, out, now - t_start, start_step=start), flush=True)
      window.update(t=now, step=step)

  step, pending = start, None
  with preemption.PreemptionGuard() as guard, jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    while step < job.num_steps:
      batch = job.batch(step)
      kind, step_fn = job.step_fn(step)
      state, device_metrics = step_fn(state, batch)
      if pending is not None:
        flush(pending)
      step += 1
      pending = (step, kind, device_metrics)
      stop, last, evaluate = guard.should_stop(step), step == job.num_steps, job.eval_due(step)
      if evaluate or stop or last or step % job.checkpoint_every == 0:
        flush(pending)  # a NaN must not be evaluated or saved
        pending = None
        if evaluate:
          t0 = time.perf_counter()
          job.evaluate(step, state)
          window["t"] += time.perf_counter() - t0  # evaluation is not step time
        saved_time = train_time + time.perf_counter() - window["t"]
        ckpt.save(step, state, job.data_iter, force=stop or last,
                  host_state={"skipped_steps": skipped, "train_time_s": saved_time})
        writer.flush()  # the metrics up to a checkpoint are where its workdir is
      if stop:
        logging.warning("Preemption signal: saved step %d; exiting.", step)
        print(f"stopped by signal at step {step}; checkpoint saved in {ckpt.directory}",
              flush=True)
        break
    if pending is not None:
      flush(pending)
  return Result(step, state, train_time, skipped)


def compile_counts(step_fns: dict[str, Callable]) -> dict[str, int]:
  """Compiles per jitted step function: 1 once used, never more (no recompiles)."""
  return {name: fn._cache_size() for name, fn in step_fns.items()}  # pylint: disable=protected-access
