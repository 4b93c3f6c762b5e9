"""One file layer for local paths and buckets (gs://, or any URL etils.epath serves).

Every read and write of the project goes through here (the workdir module
names the files of a run; this module moves the bytes), so `--workdir`,
`data.dataset_dir`, `init_from`, export folders and text sources may be a
local path or `gs://bucket/...` alike. `etils.epath` dispatches a URL to its
fsspec file system (gcsfs for gs://, pinned in requirements.txt).

What differs on a bucket, and how it is handled here:
  * An object is written whole or not at all, so `atomic_write` writes it
    directly; a local file goes through a temp file and a rename.
  * There is no append: `mirror.Mirror` keeps a local copy of a growing file
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
import gzip
import hashlib
import json
import os
import socket
import shutil
import tempfile
from typing import Any, Iterator, Sequence

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


def expand(patterns: Sequence[str] | str, what: str = "input_files") -> list[str]:
  """Expands paths/globs (local or gs://) in order; a pattern that matches nothing
  is an error."""
  if isinstance(patterns, (str, os.PathLike)):
    patterns = [patterns]
  out = []
  for p in patterns:
    p = os.fspath(p)
    matches = glob(p) if has_magic(p) else ([p] if exists(p) else [])
    if not matches:
      raise FileNotFoundError(f"{what}: no file matches {p!r}")
    for m in matches:
      if isdir(m):
        raise IsADirectoryError(f"{what}: {m!r} is a directory, expected a text file")
    out.extend(matches)
  if not out:
    raise ValueError(f"{what}: no input files given")
  return out


def read_lines(path: str) -> Iterator[str]:
  """Lines of a .txt or .txt.gz file (local or gs://) without the newline; names the
  file on bad UTF-8."""
  lineno = 0
  try:
    with open(path, "rb") as raw_file:
      f = gzip.GzipFile(fileobj=raw_file) if path.endswith(".gz") else raw_file
      for lineno, raw in enumerate(f, 1):  # decoded per line: errors carry the line number
        yield raw.decode("utf-8").rstrip("\r\n")
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not valid UTF-8 at line {lineno}: {e}") from None
  except (OSError, EOFError) as e:  # e.g. a truncated or fake .gz
    raise ValueError(f"{path}: cannot read: {e}") from None


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


def replace(src, target) -> None:
  """Renames `src` to `target`, replacing it (in a bucket: a copy, then a delete)."""
  epath.Path(src).replace(target)


def write_json(target, obj: Any) -> None:
  atomic_write(target, json.dumps(obj, indent=2))


def write_bytes(target, data: bytes) -> None:
  """`data` written to `target` in one go, no temp file: for a bucket object, which is
  whole or absent anyway (the mirror's uploads)."""
  epath.Path(target).write_bytes(data)


def append_bytes(target: str, data: bytes) -> None:
  """`data` appended to the bucket object `target` (a bucket has no append): uploaded
  beside it, then composed."""
  import fsspec  # pylint: disable=import-outside-toplevel
  tail = f"{target}.tail-{socket.gethostname()}-{os.getpid()}"
  epath.Path(tail).write_bytes(data)
  fs = fsspec.filesystem(target.split("://", 1)[0])
  try:
    fs.merge(target, [target, tail])
  finally:
    fs.rm(tail)


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


def files_under(root) -> list[str]:
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
  names = [n for n in files_under(built) if n != last]
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
    names = [n for n in files_under(remote_dir) if n != marker]
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
