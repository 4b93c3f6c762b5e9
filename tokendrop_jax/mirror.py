"""Background uploads of growing files (metrics.jsonl, TensorBoard events) to a bucket.

A bucket has no append, and the step loop must not wait on the network: files
that grow are written to a local copy, and a thread uploads what changed. This
module decides what and when; `files` moves the bytes.
"""
from __future__ import annotations

import builtins
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from typing import Callable

from tokendrop_jax import files


class Mirror:
  """A local working copy of a folder that lives in a bucket (or locally).

  Files appended to (metrics.jsonl, TensorBoard events) are written under `local`;
  for a bucket, a background thread uploads the ones that changed at most once every
  `interval_s` (an object store has no append), so the step loop never
  waits on the network and a long run uploads its metrics a bounded number of times
  per hour, not once per record. A file that only grew since its last upload sends
  just the new bytes, appended to the object by a server-side compose, so a record
  costs its own bytes however long the run. `sync()` asks for an upload; `flush()`
  uploads now and waits (checkpoints, exit); `close()` flushes. Writers hold `lock` while they
  append, so an upload never carries half a record. For a local target, `local` is
  the target itself and all of this does nothing.
  """

  def __init__(self, target, names: tuple[str, ...] = (), interval_s: float = 30.0):
    self.target = files.resolve(target)
    self.remote = files.is_remote(self.target)
    self.lock = threading.Lock()
    self.before_upload: Callable[[], None] | None = None  # e.g. a TensorBoard writer's flush
    if not self.remote:
      files.makedirs(self.target)
      self.local = self.target
      return
    self.local = tempfile.mkdtemp(prefix="tokendrop-mirror-")
    self._sent: dict[str, tuple[int, int]] = {}
    for name in names:  # files to continue (e.g. metrics.jsonl on resume)
      if files.exists(files.join(self.target, name)):
        dst = os.path.join(self.local, name)
        files.copy_file(files.join(self.target, name), dst)
        self._sent[name] = self._stamp(dst)
    self.interval_s = interval_s
    self.uploads = 0          # objects uploaded (the benchmark reads these)
    self.bytes_uploaded = 0
    self._error: BaseException | None = None
    self._wanted = threading.Event()
    self._stopping = threading.Event()
    self._upload_lock = threading.Lock()  # one upload at a time: thread or flush
    self._thread = threading.Thread(target=self._loop, name="tokendrop-mirror", daemon=True)
    self._thread.start()

  @staticmethod
  def _stamp(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ino  # a rewrite (truncate_after) is a new inode

  def path(self, *names: str) -> str:
    return os.path.join(self.local, *names)

  def _upload_changed(self) -> None:
    with self._upload_lock:
      with self.lock:  # a consistent snapshot: no record half written
        if self.before_upload is not None:
          self.before_upload()
        changed = []
        for name in files.files_under(self.local):
          local = os.path.join(self.local, name)
          stamp, sent = self._stamp(local), self._sent.get(name)
          if sent == stamp:
            continue
          # Grown in place since the last upload: only the new bytes go (appended to the
          # object by a server-side compose); anything else: the whole file.
          offset = sent[0] if sent and sent[2] == stamp[2] and sent[0] <= stamp[0] else 0
          with builtins.open(local, "rb") as f:
            f.seek(offset)
            changed.append((name, stamp, offset, f.read(stamp[0] - offset)))
      for name, stamp, offset, data in changed:  # the network, outside the writers' lock
        target = files.join(self.target, name)
        if offset:
          try:
            files.append_bytes(target, data)
          except Exception:  # pylint: disable=broad-except  (no compose: a zonal bucket)
            self._sent.pop(name, None)  # the whole file at the next upload
            raise
        else:
          files.write_bytes(target, data)
        self._sent[name] = stamp
        self.uploads += 1
        self.bytes_uploaded += len(data)

  def _loop(self) -> None:
    last = -math.inf
    while True:
      self._wanted.wait()
      wait = last + self.interval_s - time.monotonic()
      if self._stopping.is_set() or (wait > 0 and self._stopping.wait(wait)):
        return  # close() uploads what is left
      self._wanted.clear()
      try:
        self._upload_changed()
        self._error = None
      except Exception as e:  # pylint: disable=broad-except  (retried at the next sync)
        if self._error is None:
          logging.warning("Uploading to %s failed (%s); retrying at the next record, and "
                          "checkpoints wait for it.", self.target, e)
        self._error = e
      last = time.monotonic()

  def sync(self) -> None:
    """Asks the background thread for an upload of what changed (returns at once)."""
    if self.remote:
      self._wanted.set()

  def flush(self) -> None:
    """What was written is in the target: uploaded now (a bucket; raises if it cannot),
    or, for a local target, its writers flushed (`before_upload`)."""
    if self.remote:
      self._upload_changed()
    elif self.before_upload is not None:
      with self.lock:
        self.before_upload()

  def close(self) -> None:
    if self.remote:
      self._stopping.set()
      self._wanted.set()
      self._thread.join()
      try:
        self.flush()
      finally:
        shutil.rmtree(self.local, ignore_errors=True)
