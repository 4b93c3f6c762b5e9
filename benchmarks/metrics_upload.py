"""What metrics cost the step loop in a bucket workdir, against the GCS emulator.

  .venv/bin/python benchmarks/metrics_upload.py [--records=300] [--step_s=0.05] \
      [--output=benchmarks/results/metrics_upload.json]

The step loop calls `MetricsWriter.write` once per logged step (log_every=1 here:
the worst case). A stand-in step (sleeping `--step_s`) runs between records, and
the seconds spent inside `write` are summed, for four writers in one process,
interleaved record by record (`benchmark.time_interleaved`, the stand-in step one of
its thunks): a local workdir; a gs:// workdir as the loop writes it now (uploads in a
background thread, at most once per `--interval_s`, only the new bytes, appended by a
server-side compose, and at close); the same uploaded synchronously after every record
(what each record costs in bytes); and the whole files uploaded after every record (what
the loop did before). Reports each one's write seconds as a fraction of the step time,
and the uploads and bytes each sent. The server is the
Go fake-gcs-server on 127.0.0.1 (requirements-dev.txt); a real bucket is slower.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # tests.gcs_emulator

_RECORDS = flags.DEFINE_integer("records", 300, "Records (logged steps) per writer.")
_STEP_S = flags.DEFINE_float("step_s", 0.05, "Seconds of the stand-in step between records.")
_INTERVAL = flags.DEFINE_float("interval_s", 30.0, "Background upload interval.")
_OUTPUT = flags.DEFINE_string("output", "benchmarks/results/metrics_upload.json", "JSON path.")

# A pretraining record's fields (runner.run), as floats.
FIELDS = ("loss", "mlm_accuracy", "learning_rate", "grad_norm", "kept_fraction", "skipped",
          "step_time_s", "tokens_per_s", "train_time_s", "mfu")


def main(argv):
  del argv
  os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
  from tests import gcs_emulator  # pylint: disable=import-outside-toplevel
  from tokendrop_jax import benchmark  # pylint: disable=import-outside-toplevel
  from tokendrop_jax.training import metrics  # pylint: disable=import-outside-toplevel

  with tempfile.TemporaryDirectory() as tmp, \
      gcs_emulator.running(os.path.join(tmp, "emulator.log")):
    prefix = f"gs://{gcs_emulator.BUCKET}/bench-{uuid.uuid4().hex[:8]}"
    writers = {
        "local": metrics.MetricsWriter(os.path.join(tmp, "local"), is_main=True),
        "gs_background": metrics.MetricsWriter(f"{prefix}/background", is_main=True),
        "gs_append_every_record": metrics.MetricsWriter(f"{prefix}/append", is_main=True),
        "gs_whole_every_record": metrics.MetricsWriter(f"{prefix}/whole", is_main=True),
    }
    writers["gs_background"]._mirror.interval_s = _INTERVAL.value  # pylint: disable=protected-access
    step = {"n": 0, "record": {}}

    def stand_in_step():  # the step between each writer's records, advancing the record
      time.sleep(_STEP_S.value)
      step["n"] += 1
      step["record"] = {k: 1.0 / step["n"] for k in FIELDS}

    def write(name, w):
      def call():
        w.write(step["n"], step["record"])
        if name == "gs_append_every_record":
          w.flush()  # synchronous, the new bytes only (compose)
        elif name == "gs_whole_every_record":
          w._mirror._sent.clear()  # pylint: disable=protected-access
          w.flush()  # what the loop did before: the whole files after every record
      return call

    thunks = {"step": stand_in_step, **{name: write(name, w) for name, w in writers.items()}}
    loop = benchmark.timed(lambda: benchmark.time_interleaved(thunks, _RECORDS.value))
    results = {"records": _RECORDS.value, "step_s": _STEP_S.value,
               "interval_s": _INTERVAL.value, "wall_s": loop.wall_s, "writers": {}}
    for name, w in writers.items():
      mirror = w._mirror  # pylint: disable=protected-access
      spent = sum(loop.value[name])
      results["writers"][name] = {
          "write_s_per_record": spent / _RECORDS.value,
          "fraction_of_step": spent / _RECORDS.value / _STEP_S.value,
          "close_s": benchmark.timed(w.close).wall_s,
          "uploads": getattr(mirror, "uploads", 0),
          "bytes_uploaded": getattr(mirror, "bytes_uploaded", 0),
      }
      r = results["writers"][name]
      print(f"{name:24s} {1e3 * r['write_s_per_record']:8.3f} ms/record "
            f"({100 * r['fraction_of_step']:6.2f}% of a {_STEP_S.value * 1e3:.0f} ms step), "
            f"{r['uploads']} uploads, {r['bytes_uploaded'] / 1e6:.2f} MB, close "
            f"{r['close_s']:.2f} s", flush=True)
  benchmark.write_results(results, _OUTPUT.value)


if __name__ == "__main__":
  app.run(main)
