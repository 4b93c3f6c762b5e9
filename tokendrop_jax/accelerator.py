"""Which accelerator a run is on, checked before anything is built.

A TPU VM with the CPU-only jaxlib (or a GPU node without the CUDA plugin) runs
JAX on its host CPUs without a word: a pod run would train for days at a
thousandth of its speed. The mains take `--platform=tpu|gpu|cpu|any` (the
launchers set it) and stop at once when the backend is another, naming what
they found and the install command that fixes it.
"""
from __future__ import annotations

from importlib import metadata
from typing import Optional, Sequence

PLATFORMS = ("any", "cpu", "gpu", "tpu")
# What installs each platform's jaxlib plugin (Makefile: ACCEL=...).
INSTALL = {
    "tpu": "make install ACCEL=tpu   (pip install -r requirements-tpu.txt)",
    "gpu": "make install ACCEL=cuda  (pip install -r requirements-cuda.txt)",
    "cpu": "make install",
}


class PlatformError(ValueError):
  """The backend is not the one the run expects (a ValueError: exit 2, bad input)."""


def versions(packages: Sequence[str]) -> dict[str, Optional[str]]:
  """{package: its installed version, or None}: which build of the stack a figure came from."""
  out = {}
  for name in packages:
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      out[name] = None
  return out


def describe(devices: Sequence) -> str:
  """'4 x TPU v4' / '8 x cpu': the devices by kind, for messages."""
  kinds: dict[str, int] = {}
  for d in devices:
    kinds[d.device_kind] = kinds.get(d.device_kind, 0) + 1
  return ", ".join(f"{n} x {kind}" for kind, n in kinds.items()) or "no devices"


def check(expected: str) -> str:
  """The backend's platform, or PlatformError when it is not `expected` ('any' accepts all).

  Call it before building anything: the message names the backend found, its
  devices and the install command for `expected`.
  """
  if expected not in PLATFORMS:
    raise ValueError(f"--platform must be one of {', '.join(PLATFORMS)}, got {expected!r}")
  import jax  # pylint: disable=import-outside-toplevel
  if expected == "cpu" and not jax.config.jax_platforms:
    jax.config.update("jax_platforms", "cpu")  # asked for: do not probe for accelerators
  try:
    found, devices = jax.default_backend(), jax.devices()
  except RuntimeError as e:  # JAX_PLATFORMS names a backend that did not start
    raise PlatformError(f"--platform={expected}: JAX could not start a backend ({e}); "
                        f"install with: {INSTALL.get(expected, INSTALL['cpu'])}") from None
  if expected in ("any", found):
    return found
  hint = INSTALL[expected]
  import importlib.util  # pylint: disable=import-outside-toplevel
  has_libtpu = importlib.util.find_spec("libtpu") is not None
  cause = {"tpu": ("libtpu is installed but found no free TPU on this host (not a TPU VM, or "
                   "another process holds the chips)") if has_libtpu else "jaxlib without libtpu",
           "gpu": "jaxlib without the CUDA plugin, or no visible GPU (CUDA_VISIBLE_DEVICES)",
           "cpu": "JAX_PLATFORMS=cpu keeps JAX on the CPU"}[expected]
  raise PlatformError(
      f"--platform={expected}, but JAX runs on {found.upper()} ({describe(devices)}); "
      f"the likely cause: {cause}. Install with: {hint}; then "
      f"`python -c 'import jax; print(jax.devices())'` should list {expected.upper()} devices. "
      "--platform=any runs on whatever JAX finds.")


def process_line() -> str:
  """This process's platform and devices, one line (printed by every process of a
  multi-process run, so a worker that fell back to its CPU shows in the logs)."""
  import jax  # pylint: disable=import-outside-toplevel
  return (f"process {jax.process_index()}/{jax.process_count()}: {jax.default_backend()}, "
          f"{jax.local_device_count()} local of {jax.device_count()} devices "
          f"({describe(jax.local_devices())})")


def start(expected: str, distributed: bool) -> str | None:
  """The mains' first step after `jax.distributed`: check the platform (not even touching
  the backend for 'any'); in a multi-process run, every process prints its line once."""
  found = check(expected) if expected != "any" or distributed else None
  if distributed:
    print(process_line(), flush=True)
  return found
