"""Input-pipeline benchmark: packed+masked tokens/s per process, and corpus build time.

  python benchmarks/data_pipeline_bench.py                      # demo corpus (stdlib docs)
  python benchmarks/data_pipeline_bench.py --offline_corpus=../shared/data/offline_en

Tokenizer training and corpus building use every core; the pipeline itself is
then measured pinned to one core (--one_core), worker_count=0, as one process
of a multi-host job would run it. Writes benchmarks/results/data_pipeline.json.
"""
import json
import os
import platform
import shutil
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tokendrop_jax import benchmark  # noqa: E402
from tokendrop_jax.data import demo_corpus  # noqa: E402
from tokendrop_jax.data import pipeline  # noqa: E402
from tokendrop_jax.data import text_builder  # noqa: E402
from tokendrop_jax.data import tokenizer as tokenizer_lib  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "/tmp/tokendrop_data_bench", "Where corpora/tokenizers go.")
flags.DEFINE_string("offline_corpus", "", "Dir with train.txt.gz/valid.txt.gz (else: demo).")
flags.DEFINE_integer("vocab_size", 0, "Tokenizer vocab (0: 8000 demo, 32000 offline).")
flags.DEFINE_list("seq_lens", ["128", "512"], "Sequence lengths to measure.")
flags.DEFINE_integer("batch_tokens", 32768, "Rows per batch = batch_tokens // seq_len.")
flags.DEFINE_integer("num_batches", 300, "Timed batches per setting (after 5 warm-up).")
flags.DEFINE_integer("read_threads", 4, "grain read threads (they share the pinned core).")
flags.DEFINE_bool("one_core", True, "Pin the pipeline measurement to one CPU core.")
flags.DEFINE_string("output", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                           "results", "data_pipeline.json"), "JSON output.")


def _prepare(result):
  os.makedirs(FLAGS.workdir, exist_ok=True)
  if FLAGS.offline_corpus:
    name = "offline_en"
    train = os.path.join(FLAGS.offline_corpus, "train.txt.gz")
    valid = os.path.join(FLAGS.offline_corpus, "valid.txt.gz")
    vocab = FLAGS.vocab_size or 32000
  else:
    name = "demo"
    t0 = time.perf_counter()
    train, valid = demo_corpus.write_demo_corpus(os.path.join(FLAGS.workdir, "demo_text"))
    result["demo_corpus_write_s"] = round(time.perf_counter() - t0, 2)
    vocab = FLAGS.vocab_size or 8000
  result.update(corpus=name, corpus_bytes=sum(_text_bytes(p) for p in (train, valid)),
                vocab_size=vocab)
  t0 = time.perf_counter()
  model = tokenizer_lib.train_tokenizer([train], vocab, os.path.join(
      FLAGS.workdir, f"spm_{name}_{vocab}"))
  result["tokenizer_train_s"] = round(time.perf_counter() - t0, 2)
  tok = tokenizer_lib.Tokenizer(model)
  data_dir = os.path.join(FLAGS.workdir, f"datasets_{name}")
  shutil.rmtree(data_dir, ignore_errors=True)  # time a fresh build, not a reuse
  t0 = time.perf_counter()
  path = text_builder.build_corpus([train], [valid], tok, data_dir)
  result["corpus_build_s"] = round(time.perf_counter() - t0, 2)
  meta = text_builder.load_corpus_meta(path)
  result["corpus_tokens"] = {k: v["tokens"] for k, v in meta["splits"].items()}
  result["corpus_documents"] = {k: v["documents"] for k, v in meta["splits"].items()}
  result["tokenize_mb_per_s"] = round(result["corpus_bytes"] / 1e6 / result["corpus_build_s"], 2)
  return path


def _text_bytes(path):
  if path.endswith(".gz"):
    return sum(len(line.encode("utf-8")) + 1 for line in tokenizer_lib.read_lines(path))
  return os.path.getsize(path)


def _measure(path, seq_len):
  rows = max(1, FLAGS.batch_tokens // seq_len)
  it = pipeline.make_pretrain_iterator(
      path, seq_len=seq_len, max_predictions_per_seq=max(1, round(0.15 * seq_len)) + 2,
      global_batch_size=rows, seed=0, shard_index=0, num_shards=1,
      read_threads=FLAGS.read_threads)
  for _ in range(5):
    next(it)
  real = 0
  t0 = time.perf_counter()
  cpu0 = time.process_time()
  for _ in range(FLAGS.num_batches):
    batch = next(it)
    real += int(batch["input_mask"].sum())
  wall = time.perf_counter() - t0
  cpu = time.process_time() - cpu0
  tokens = FLAGS.num_batches * rows * seq_len
  return {"seq_len": seq_len, "batch_rows": rows, "batches": FLAGS.num_batches,
          "tokens_per_s": round(tokens / wall), "real_tokens_per_s": round(real / wall),
          "fill": round(real / tokens, 4), "ms_per_batch": round(1e3 * wall / FLAGS.num_batches, 2),
          "cpu_s_per_wall_s": round(cpu / wall, 2)}


def main(argv):
  del argv
  result = {"python": platform.python_version(), "cpus": os.cpu_count()}
  path = _prepare(result)
  if FLAGS.one_core and hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    result["pinned_cores"] = sorted(os.sched_getaffinity(0))
  result["pipeline"] = [_measure(path, int(s)) for s in FLAGS.seq_lens]
  print(json.dumps(result, indent=2))
  benchmark.write_results(result, FLAGS.output)


if __name__ == "__main__":
  app.run(main)
