"""Every test runs with 8 fake CPU devices so that sharding code is exercised."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# The mains the tests start as subprocesses run on the CPU too: with libtpu installed (the
# TPU extra, for the compile tests), JAX would first look for a TPU and log that it found none.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_platforms", "cpu")

# gcsfs reads this when first imported: it would ask a gRPC endpoint for each
# bucket's type, which the tests' HTTP emulator (tests/gcs_emulator.py) lacks.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
  """A GCS-protocol server on 127.0.0.1 for the whole session (tests/gcs_emulator.py)."""
  from tests import gcs_emulator  # pylint: disable=g-import-not-at-top
  with gcs_emulator.running(str(tmp_path_factory.mktemp("gcs") / "emulator.log")) as url:
    yield url
