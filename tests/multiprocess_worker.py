"""One process of a multi-process CPU run (see test_multiprocess.py).

  python -m tests.multiprocess_worker PORT PROCESS_ID NUM_PROCESSES DEVICES_PER_PROCESS SPEC

SPEC (JSON) lists jobs run in order, each one a `tests.multiprocess_jobs.run_job` job.
"""
import json
import sys

import jax

port, process_id, num_processes, local_devices, spec = sys.argv[1:6]
jax.config.update("jax_num_cpu_devices", int(local_devices))
jax.config.update("jax_platforms", "cpu")
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                           num_processes=int(num_processes), process_id=int(process_id))

from absl import flags  # noqa: E402

from tests import multiprocess_jobs  # noqa: E402

flags.FLAGS.mark_as_parsed()
with open(spec) as f:
  for job in json.load(f):
    multiprocess_jobs.run_job(job)
print("WORKER DONE", jax.process_index(), jax.process_count(), jax.device_count(), flush=True)
