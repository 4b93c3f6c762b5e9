"""One file layer for local paths and buckets (gs://, or any URL etils.epath serves).

Every read and write of the project goes through here (the workdir module
names the files of a run; this module moves the bytes), so `--workdir`,
`data.dataset_dir`, `init_from`, export folders and text sources may be a
local path or `gs://bucket/...` alike. `etils.epath` dispatches a URL to its
fsspec file system (gcsfs for gs://, pinned in requirements.txt).

What differs on a bucket, and how it is handled here:
  * An object is written whole or not at all, so `atomic_write` writes it
    directly; a local file goes through a temp file and a rename.
  * There is no append: `Mirror` keeps a local copy of a growing file
    (metrics.jsonl, TensorBoard events) and uploads it after each change.
  * A folder is not renamed atomically: `publish_dir` uploads a folder built
    locally and writes its marker file last, which readers wait for.
  * ArrayRecord reads local files only: `local_copy` brings a dataset
    folder to a per-host cache once ($TOKENDROP_JAX_CACHE, default
    /tmp/tokendrop_jax_cache), keyed by the URL and the dataset's marker.
"""
from __future__ import annotations

import builtins
import glob as glob_lib
import hashlib
import json
import logging
import math
import os
import socket
import shutil
import tempfile
import threading
import time
from typing import Any, Callable

from etils import epath

CACHE_ENV = "TOKENDROP_JAX_CACHE"
_DEFAULT_CACHE = os.path.join(tempfile.gettempdir(), "tokendrop_jax_cache")


def is_remote(p) -> bool:
  return "://" in os.fspath(p)


def resolve(p) -> str:
  """An absolute local path, or a URL unchanged."""
  p = os.fspath(p)
  return p if is_remote(p) else os.path.abspath(p)


def join(root, *names: str) -> str:
  return os.path.join(os.fspath(root), *names)


def basename(p) -> str:
  return os.path.basename(os.fspath(p).rstrip("/"))


def dirname(p) -> str:
  return os.path.dirname(os.fspath(p).rstrip("/"))


def exists(p) -> bool:
  return epath.Path(p).exists()


def isdir(p) -> bool:
  return epath.Path(p).is_dir()


def isfile(p) -> bool:
  path = epath.Path(p)
  return path.exists() and not path.is_dir()


def makedirs(p) -> None:
  epath.Path(p).mkdir(parents=True, exist_ok=True)


def check_writable(target, what: str) -> None:
  """ValueError naming `what` and `target` unless a file can be written (and removed) where
  `target` will be: the folder itself or, locally, its nearest existing parent. A bucket
  that does not exist accepts creating, listing and checking its paths; only a write
  fails, so the mains probe before hours of work rather than at their first upload."""
  target = resolve(target)
  folder = target
  if not is_remote(target):
    while not os.path.exists(folder) and os.path.dirname(folder) != folder:
      folder = os.path.dirname(folder)
  probe = join(folder, f".tokendrop-write-probe-{socket.gethostname()}-{os.getpid()}")
  try:
    epath.Path(probe).write_bytes(b"")
    epath.Path(probe).unlink()
  except Exception as e:  # pylint: disable=broad-except  (OSError, gcsfs' HTTP errors)
    reason = " ".join(str(e).split())[:300] or type(e).__name__
    missing = is_remote(target) and ("404" in reason or "Not Found" in reason
                                     or isinstance(e, FileNotFoundError))
    bucket = target.split("/")[2] if is_remote(target) else ""
    raise ValueError(f"{what}={target}: cannot write there"
                     + (f" (does the bucket gs://{bucket} exist, and may this account write "
                        "to it?)" if missing else "")
                     + f": {type(e).__name__}: {reason}") from None


def listdir(p) -> list[str]:
  """Sorted names in folder `p` ([] when it does not exist)."""
  path = epath.Path(p)
  return sorted(c.name for c in path.iterdir()) if path.is_dir() else []


def rmtree(p) -> None:
  path = epath.Path(p)
  if path.is_dir():
    path.rmtree(missing_ok=True)
  elif path.exists():
    path.unlink()


def open(p, mode: str = "r", **kwargs):  # pylint: disable=redefined-builtin
  """A file object of `p` (local or URL); text modes are UTF-8 unless told."""
  if "b" not in mode:
    kwargs.setdefault("encoding", "utf-8")
  return epath.Path(p).open(mode, **kwargs)


def read_bytes(p) -> bytes:
  return epath.Path(p).read_bytes()


def read_text(p) -> str:
  return epath.Path(p).read_text(encoding="utf-8")


def read_json(p) -> Any:
  return json.loads(read_text(p))


def size_and_mtime(p) -> list[int]:
  """[size in bytes, modification time in ns]: what says a source changed."""
  p = os.fspath(p)
  if not is_remote(p):
    st = os.stat(p)
    return [st.st_size, st.st_mtime_ns]
  st = epath.Path(p).stat()
  return [int(st.length), int(round(float(st.mtime or 0) * 1e9))]


def glob(pattern: str) -> list[str]:
  """Sorted matches of a glob (`*`, `?`, `[...]`), local or in a bucket."""
  pattern = os.fspath(pattern)
  if not is_remote(pattern):
    return sorted(glob_lib.glob(pattern))
  scheme, rest = pattern.split("://", 1)
  parts = rest.split("/")
  first = next(i for i, part in enumerate(parts) if glob_lib.has_magic(part))
  root = epath.Path(f"{scheme}://" + "/".join(parts[:first]))
  if not root.is_dir():
    return []
  return sorted(os.fspath(m) for m in root.glob("/".join(parts[first:])))


def has_magic(pattern: str) -> bool:
  return glob_lib.has_magic(os.fspath(pattern))


# ------------------------------------------------------------------ writes ---
def atomic_write(target, data: str | bytes) -> None:
  """Writes `data` to `target` so that a reader sees the old file or the new one.

  Local: a temp file beside it and a rename. A bucket: one object upload,
  which is already all or nothing (a rename there is a copy).
  """
  target = epath.Path(target)
  target.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(target):
    (target.write_bytes if isinstance(data, bytes) else target.write_text)(data)
    return
  fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.tmp-")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data if isinstance(data, bytes) else data.encode("utf-8"))
      f.flush()
      os.fsync(f.fileno())  # on disk before the rename makes it the file
    os.replace(tmp, target)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_json(target, obj: Any) -> None:
  atomic_write(target, json.dumps(obj, indent=2))


def copy_file(src, target) -> None:
  """Copies one file (either side local or remote), atomically as `atomic_write`."""
  if not is_remote(src) and not is_remote(target):
    parent = dirname(resolve(target))
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=".copy-tmp-")
    os.close(fd)
    try:
      shutil.copyfile(src, tmp)
      os.replace(tmp, target)
    except BaseException:
      if os.path.exists(tmp):
        os.remove(tmp)
      raise
    return
  makedirs(dirname(target))
  with open(src, "rb") as fin, open(target, "wb") as fout:
    shutil.copyfileobj(fin, fout, 1 << 24)


def _files_under(root) -> list[str]:
  """Relative paths ('/'-separated) of the files under `root`, sorted."""
  out, stack = [], [(epath.Path(root), "")]
  while stack:
    folder, rel = stack.pop()
    for child in folder.iterdir():
      if child.is_dir():
        stack.append((child, f"{rel}{child.name}/"))
      else:
        out.append(rel + child.name)
  return sorted(out)


def publish_dir(built, target, last: str) -> None:
  """Moves the finished local folder `built` to `target`; `target/last` appears last.

  Local target: one rename (the commit point; fails if `target` exists). A
  bucket: every other file is uploaded first, then `last`, so a reader that
  waits for `last` never sees a half-copied folder.
  """
  if not is_remote(target):
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    os.rename(built, target)
    return
  names = [n for n in _files_under(built) if n != last]
  for name in names + [last]:
    copy_file(os.path.join(built, name), join(target, name))


# ------------------------------------------------------------------- cache ---
def cache_root() -> str:
  return os.environ.get(CACHE_ENV) or _DEFAULT_CACHE


def local_copy(remote_dir, marker: str) -> str:
  """A local copy of the finished folder `remote_dir` (one with `marker`) -> its path.

  Copied once per host into the cache, under a name made of the URL and the
  marker's bytes, so a folder prepared again at the same URL is copied again.
  Processes of one host that copy at once each write their own temp folder;
  the first rename wins and the others use it. Local paths are returned as is.
  """
  if not is_remote(remote_dir):
    return os.fspath(remote_dir)
  marker_path = join(remote_dir, marker)
  if not exists(marker_path):
    raise FileNotFoundError(f"{remote_dir} is not a finished dataset: no {marker} in it")
  key = hashlib.sha256(os.fspath(remote_dir).encode() + b"\0" + read_bytes(marker_path))
  final = os.path.join(cache_root(), f"{basename(remote_dir)}-{key.hexdigest()[:16]}")
  if os.path.exists(os.path.join(final, marker)):
    return final
  os.makedirs(cache_root(), exist_ok=True)
  tmp = tempfile.mkdtemp(dir=cache_root(), prefix=".copy-")
  try:
    names = [n for n in _files_under(remote_dir) if n != marker]
    for name in names + [marker]:
      os.makedirs(os.path.dirname(os.path.join(tmp, name)), exist_ok=True)
      with open(join(remote_dir, name), "rb") as fin, builtins.open(
          os.path.join(tmp, name), "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 24)
    try:
      os.rename(tmp, final)
    except OSError:
      if not os.path.exists(os.path.join(final, marker)):
        raise  # not a lost race: a real error
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return final



# ------------------------------------------------------------------ mirror ---
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
    self.target = resolve(target)
    self.remote = is_remote(self.target)
    self.lock = threading.Lock()
    self.before_upload: Callable[[], None] | None = None  # e.g. a TensorBoard writer's flush
    if not self.remote:
      makedirs(self.target)
      self.local = self.target
      return
    self.local = tempfile.mkdtemp(prefix="tokendrop-mirror-")
    self._sent: dict[str, tuple[int, int]] = {}
    for name in names:  # files to continue (e.g. metrics.jsonl on resume)
      if exists(join(self.target, name)):
        dst = os.path.join(self.local, name)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with builtins.open(dst, "wb") as f:
          f.write(read_bytes(join(self.target, name)))
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
        for name in _files_under(self.local):
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
        target = join(self.target, name)
        if offset:
          try:
            self._append(target, data)
          except Exception:  # pylint: disable=broad-except  (no compose: a zonal bucket)
            self._sent.pop(name, None)  # the whole file at the next upload
            raise
        else:
          epath.Path(target).write_bytes(data)
        self._sent[name] = stamp
        self.uploads += 1
        self.bytes_uploaded += len(data)

  @staticmethod
  def _append(target: str, data: bytes) -> None:
    """`data` appended to the object `target`: uploaded beside it, then composed."""
    import fsspec  # pylint: disable=import-outside-toplevel
    tail = f"{target}.tail-{socket.gethostname()}-{os.getpid()}"
    epath.Path(tail).write_bytes(data)
    fs = fsspec.filesystem(target.split("://", 1)[0])
    try:
      fs.merge(target, [target, tail])
    finally:
      fs.rm(tail)

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
