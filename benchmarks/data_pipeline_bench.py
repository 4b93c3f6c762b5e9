"""Input-pipeline benchmark: packed+masked tokens/s per process, and corpus build time.

  python benchmarks/data_pipeline_bench.py                      # demo corpus (stdlib docs)
  python benchmarks/data_pipeline_bench.py --offline_corpus=../shared/data/offline_en

A row per tokenizer (SentencePiece unigram, WordPiece; each trained on the
corpus) x masking mode (token, whole_word, ngram) x sequence length. Tokenizer
training and corpus building use every core; the pipeline itself is then
measured pinned to one core (--one_core), worker_count=0, as one process of a
multi-host job would run it. Writes benchmarks/results/data_pipeline.json (the
top-level tokenizer_train_s / corpus_build_s are SentencePiece's, as before).

Also (issue #16): `prepare` throughput, the first tokenizer's dataset built
with 1 worker and with every core (`--prepare_workers`), in MB of text per
second; and, with `--emulator` (fake-gcs-server from the test extras), that
dataset uploaded to a local GCS-protocol server, copied back to the host cache
as a pod's hosts read it (ArrayRecord reads local files), and the pipeline's
tokens/s on that copy next to the same pipeline on the local build.
"""
import contextlib
import json
import os
import shutil
import sys
import tempfile

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tokendrop_jax import benchmark, files  # noqa: E402
from tokendrop_jax.data import demo_corpus  # noqa: E402
from tokendrop_jax.data import pipeline  # noqa: E402
from tokendrop_jax.data import text_builder  # noqa: E402
from tokendrop_jax.data import tokenizer as tokenizer_lib  # noqa: E402
from tokendrop_jax.data import wordpiece  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "/tmp/tokendrop_data_bench", "Where corpora/tokenizers go.")
flags.DEFINE_string("offline_corpus", "", "Dir with train.txt.gz/valid.txt.gz (else: demo).")
flags.DEFINE_integer("vocab_size", 0, "Tokenizer vocab (0: 8000 demo, 32000 offline).")
flags.DEFINE_list("seq_lens", ["128", "512"], "Sequence lengths to measure.")
flags.DEFINE_integer("batch_tokens", 32768, "Rows per batch = batch_tokens // seq_len.")
flags.DEFINE_integer("num_batches", 300, "Timed batches per setting (after 5 warm-up).")
flags.DEFINE_integer("read_threads", 4, "grain read threads (they share the pinned core).")
flags.DEFINE_list("tokenizers", ["sentencepiece", "wordpiece"], "Tokenizer kinds to measure.")
flags.DEFINE_list("maskings", ["token", "whole_word", "ngram"], "data.masking modes to measure.")
flags.DEFINE_integer("max_ngram", 3, "data.max_ngram of the ngram rows.")
flags.DEFINE_list("prepare_workers", ["1", str(os.cpu_count() or 1)],
                  "Worker counts to time the dataset build with (prepare throughput).")
flags.DEFINE_bool("emulator", True, "Time the dataset's round trip through a local GCS "
                  "emulator and the pipeline on its copy (needs the test extras).")
flags.DEFINE_bool("one_core", True, "Pin the pipeline measurement to one CPU core.")
flags.DEFINE_string("output", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                           "results", "data_pipeline.json"), "JSON output.")


def _prepare(result):
  """Writes/finds the corpus, then per tokenizer kind: trains it, builds the dataset."""
  os.makedirs(FLAGS.workdir, exist_ok=True)
  if FLAGS.offline_corpus:
    name = "offline_en"
    train = os.path.join(FLAGS.offline_corpus, "train.txt.gz")
    valid = os.path.join(FLAGS.offline_corpus, "valid.txt.gz")
    vocab = FLAGS.vocab_size or 32000
  else:
    name = "demo"
    written = benchmark.timed(
        lambda: demo_corpus.write_demo_corpus(os.path.join(FLAGS.workdir, "demo_text")))
    (train, valid), result["demo_corpus_write_s"] = written.value, round(written.wall_s, 2)
    vocab = FLAGS.vocab_size or 8000
  result.update(corpus=name, corpus_bytes=sum(_text_bytes(p) for p in (train, valid)),
                vocab_size=vocab, tokenizers={})
  paths = {}
  for kind in FLAGS.tokenizers:
    trained = benchmark.timed(lambda k=kind: _train_tokenizer(k, train, vocab, name))
    tok, info = trained.value, {"tokenizer_train_s": round(trained.wall_s, 2)}
    data_dir = os.path.join(FLAGS.workdir, f"datasets_{name}_{kind}")
    shutil.rmtree(data_dir, ignore_errors=True)  # time a fresh build, not a reuse
    built = benchmark.timed(
        lambda t=tok, d=data_dir: text_builder.build_corpus([train], [valid], t, d))
    path, info["corpus_build_s"] = built.value, round(built.wall_s, 2)
    meta = text_builder.load_corpus_meta(path)
    info["corpus_tokens"] = {k: v["tokens"] for k, v in meta["splits"].items()}
    info["corpus_documents"] = {k: v["documents"] for k, v in meta["splits"].items()}
    info["tokenize_mb_per_s"] = round(result["corpus_bytes"] / 1e6 / info["corpus_build_s"], 2)
    result["tokenizers"][kind] = info
    if kind == "sentencepiece":  # the top-level fields of the earlier single-tokenizer runs
      result.update({k: v for k, v in info.items()})
    paths[kind] = (path, tok)
  return paths, train, valid


def _train_tokenizer(kind, train, vocab, name):
  if kind == "sentencepiece":
    return tokenizer_lib.Tokenizer(tokenizer_lib.train_tokenizer(
        [train], vocab, os.path.join(FLAGS.workdir, f"spm_{name}_{vocab}")))
  if kind == "wordpiece":
    return tokenizer_lib.load_tokenizer(wordpiece.train_wordpiece(
        [train], vocab, os.path.join(FLAGS.workdir, f"wordpiece_{name}_{vocab}.json")))
  raise ValueError(f"--tokenizers: unknown kind {kind!r}")


def _prepare_throughput(result, train, valid, tok):
  """The dataset build (what `python -m tokendrop_jax.prepare` runs) per worker count."""
  out = {}
  for workers in sorted({int(w) for w in FLAGS.prepare_workers}):
    data_dir = tempfile.mkdtemp(dir=FLAGS.workdir, prefix="prepare-")
    build_s = benchmark.timed(lambda d=data_dir, w=workers: text_builder.build_corpus(
        [train], [valid], tok, d, workers=w)).wall_s
    shutil.rmtree(data_dir)
    mb_per_s = result["corpus_bytes"] / 1e6 / build_s
    out[str(workers)] = {"build_s": round(build_s, 2), "mb_per_s": round(mb_per_s, 2),
                         "mb_per_s_per_worker": round(mb_per_s / workers, 2)}
  result["prepare"] = {"tokenizer": tok.kind, "by_workers": out}


def _dir_bytes(path):
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def _through_emulator(result, path, stack):
  """Uploads the dataset to the emulator and copies it back as a host would -> the copy.

  `stack` (an ExitStack) keeps the emulator running until the measurements end.
  """
  os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # before gcsfs loads
  from tests import gcs_emulator  # pylint: disable=g-import-not-at-top
  stack.enter_context(gcs_emulator.running(os.path.join(FLAGS.workdir, "emulator.log")))
  os.environ[files.CACHE_ENV] = tempfile.mkdtemp(dir=FLAGS.workdir, prefix="cache-")
  remote = f"gs://{gcs_emulator.BUCKET}/{os.path.basename(path)}"
  size = _dir_bytes(path)
  # A bucket: copied, marker last.
  upload_s = benchmark.timed(lambda: files.publish_dir(path, remote, text_builder.META_FILE)).wall_s
  copied = benchmark.timed(lambda: text_builder.local_dataset(remote))  # each host, once
  local, copy_s = copied.value, copied.wall_s
  assert _dir_bytes(local) == size, (local, size)
  result["emulator"] = {"dataset_mb": round(size / 1e6, 2), "upload_s": round(upload_s, 2),
                        "host_copy_s": round(copy_s, 2),
                        "host_copy_mb_per_s": round(size / 1e6 / copy_s, 2)}
  return remote


def _text_bytes(path):
  if path.endswith(".gz"):
    return sum(len(line.encode("utf-8")) + 1 for line in files.read_lines(path))
  return os.path.getsize(path)


def _measure(path, tok, kind, mode, seq_len):
  rows = max(1, FLAGS.batch_tokens // seq_len)
  it = pipeline.make_pretrain_iterator(
      path, seq_len=seq_len, max_predictions_per_seq=max(1, round(0.15 * seq_len)) + 2,
      global_batch_size=rows, seed=0, shard_index=0, num_shards=1,
      read_threads=FLAGS.read_threads, tokenizer=tok, masking=mode, max_ngram=FLAGS.max_ngram)
  for _ in range(5):
    next(it)

  def consume():
    real = masked = 0
    for _ in range(FLAGS.num_batches):
      batch = next(it)
      real += int(batch["input_mask"].sum())
      masked += int(batch["masked_lm_weights"].sum())
    return real, masked

  # One timing of the whole loop, wall and CPU: its throughput, not a per-batch figure.
  (real, masked), wall, cpu = benchmark.timed(consume)
  tokens = FLAGS.num_batches * rows * seq_len
  # tokens_per_cpu_s: the same per second of CPU the process got, which a machine
  # shared with other jobs (cpu_s_per_wall_s < 1) does not lower.
  return {"tokenizer": kind, "masking": mode, "seq_len": seq_len, "batch_rows": rows,
          "batches": FLAGS.num_batches, "tokens_per_s": round(tokens / wall),
          "real_tokens_per_s": round(real / wall), "tokens_per_cpu_s": round(tokens / cpu),
          "fill": round(real / tokens, 4), "ms_per_batch": round(1e3 * wall / FLAGS.num_batches, 2),
          "cpu_s_per_wall_s": round(cpu / wall, 2),
          "predictions_per_real_token": round(masked / real, 4)}


def main(argv):
  del argv
  result = {}
  paths, train, valid = _prepare(result)
  first_path, first_tok = next(iter(paths.values()))
  _prepare_throughput(result, train, valid, first_tok)
  with contextlib.ExitStack() as stack:
    remote = _through_emulator(result, first_path, stack) if FLAGS.emulator else None
    if FLAGS.one_core and hasattr(os, "sched_setaffinity"):
      os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
      result["pinned_cores"] = sorted(os.sched_getaffinity(0))
    if FLAGS.maskings != ["token"]:
      result["max_ngram"] = FLAGS.max_ngram
    result["pipeline"] = [_measure(path, tok, kind, mode, int(s))
                          for kind, (path, tok) in paths.items()
                          for mode in FLAGS.maskings for s in FLAGS.seq_lens]
    if remote:  # the same rows, local build and the bucket's host copy, back to back
      seq = int(FLAGS.seq_lens[0])
      rows = {where: _measure(p, first_tok, first_tok.kind, "token", seq)
              for where, p in (("local", first_path), ("gs_host_copy", remote))}
      result["emulator"]["pipeline_seq_len"] = seq
      result["emulator"]["tokens_per_s"] = {k: r["tokens_per_s"] for k, r in rows.items()}
      result["emulator"]["tokens_per_cpu_s"] = {k: r["tokens_per_cpu_s"] for k, r in rows.items()}
  print(json.dumps(result, indent=2))
  benchmark.write_results(result, FLAGS.output)


if __name__ == "__main__":
  app.run(main)
