"""benchmarks/data_pipeline_bench.py at tiny sizes: every row, prepare throughput, emulator."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_rows_per_tokenizer_and_masking_prepare_and_the_bucket_copy(tmp_path):
  out = tmp_path / "dp.json"
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "benchmarks", "data_pipeline_bench.py"),
       f"--workdir={tmp_path / 'work'}", "--vocab_size=500", "--num_batches=2", "--seq_lens=64",
       "--tokenizers=sentencepiece,wordpiece", "--maskings=token,ngram",
       "--prepare_workers=1,2", f"--output={out}"],
      cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(out.read_text())
  assert [(p["tokenizer"], p["masking"]) for p in r["pipeline"]] == [
      ("sentencepiece", "token"), ("sentencepiece", "ngram"), ("wordpiece", "token"),
      ("wordpiece", "ngram")]
  for p in r["pipeline"]:
    assert p["tokens_per_s"] > 0 and 0.1 < p["predictions_per_real_token"] < 0.2
  assert set(r["prepare"]["by_workers"]) == {"1", "2"}
  assert all(w["mb_per_s"] > 0 for w in r["prepare"]["by_workers"].values())
  emu = r["emulator"]
  assert emu["dataset_mb"] > 0 and emu["host_copy_s"] > 0
  assert set(emu["tokens_per_s"]) == {"local", "gs_host_copy"}
