"""One process of a two-process CPU run (see test_multiprocess.py)."""
import json
import sys

import jax

port, process_id, workdir, data_dir, out = sys.argv[1:6]
jax.config.update("jax_num_cpu_devices", 2)
jax.config.update("jax_platforms", "cpu")
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                           process_id=int(process_id))

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from tests.test_config import load  # noqa: E402
from tokendrop_jax.training import loop  # noqa: E402

flags.FLAGS.mark_as_parsed()
config = load("tiny")
config.data.dataset_dir = data_dir
config.train.update(num_steps=6, log_every=1, eval_every=6, checkpoint_every=3, eval_batches=2)
summary = loop.train_and_evaluate(config, workdir)
run = loop.build(config, (0, 1, 2, 3, 4))
from tokendrop_jax.training import checkpoint  # noqa: E402
import os  # noqa: E402
ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), save_every=1, keep=0)
state, step = ckpt.restore(run.layout.abstract)
ckpt.close()
from jax.experimental import multihost_utils  # noqa: E402
params = multihost_utils.process_allgather(state.params, tiled=True)
checksum = float(sum(np.abs(np.asarray(x, np.float64)).sum() for x in jax.tree_util.tree_leaves(params)))
with open(out, "w") as f:
  json.dump({"step": step, "eval_loss": summary.get("eval/loss"), "checksum": checksum,
             "devices": jax.device_count(), "processes": jax.process_count()}, f)
