"""A ~1.5 MB English corpus from what every Python install carries.

So the demo runs on a fresh machine with no network: module, class and function
docstrings of the standard library (read with `ast`, nothing is imported) plus
the `pydoc_data.topics` help texts. Prose only: doctest and code lines are
dropped. One sentence per line, a blank line between documents (one document
per module or help topic), deterministic for a given Python install; every
20th document is held out for validation.

The `ast` work runs in a fresh child interpreter, because CPython 3.11's
`ast.parse` fails with "SystemError: AST constructor recursion depth mismatch"
when another parse runs inside it (a gc callback, or a finalizer whose
traceback gets formatted; gh-106905), which earlier code in a process can set up.

  python -m tokendrop_jax.data.demo_corpus --out_dir=workdir/demo/corpus
"""
from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
import sysconfig

from tokendrop_jax import files

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'`])")
_WORD = re.compile(r"[A-Za-z]{2,}")
# Directories of the stdlib whose text is tests, data or third-party code.
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__",
              "lib2to3", "ensurepip", "turtledemo", "tkinter", "idlelib", "pydoc_data"}


def split_sentences(text: str) -> list[str]:
  """Prose paragraphs of a docstring/help text -> sentences (code lines dropped)."""
  out = []
  for para in re.split(r"\n\s*\n", text):
    lines = []
    for line in para.splitlines():
      s = line.strip()
      # Code, doctests, tables, option lists, reST directives: not prose.
      if (not s or s.startswith((">>>", "...", "$ ", "|", "+-", "==", "--", ".. ", ":", "*"))
          or line.startswith("        ") or s.endswith("::")):
        lines = []
        break
      lines.append(s)
    if not lines:
      continue
    for sent in _SENTENCE_END.split(" ".join(lines)):
      sent = " ".join(sent.split())
      words = sent.split()
      # Keep sentences that look like English: enough words, mostly alphabetic.
      if len(words) >= 4 and len(_WORD.findall(sent)) >= 0.6 * len(words) and len(sent) < 1000:
        out.append(sent)
  return out


def _module_document(path: str) -> list[str]:
  try:
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), filename=path)
  except (SyntaxError, UnicodeDecodeError, ValueError):
    return []
  sentences = []
  for node in [tree] + sorted(
      (n for n in ast.walk(tree)
       if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))),
      key=lambda n: (n.lineno, n.col_offset)):
    doc = ast.get_docstring(node, clean=True)
    if doc:
      sentences.extend(split_sentences(doc))
  return sentences


def _all_documents():
  try:
    from pydoc_data import topics  # pylint: disable=g-import-not-at-top
    for name in sorted(topics.topics):
      yield split_sentences(topics.topics[name])
  except ImportError:  # some distributions strip pydoc_data
    pass
  stdlib = sysconfig.get_paths()["stdlib"]
  for root, dirs, names in os.walk(stdlib):
    dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
    for name in sorted(names):
      if name.endswith(".py"):
        yield _module_document(os.path.join(root, name))


def demo_documents(max_bytes: int = 1_600_000) -> list[list[str]]:
  """Documents (lists of sentences) in a fixed order, about `max_bytes` of text.

  Computed by a clean child interpreter (see the module docstring).
  """
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  code = ("import json, sys; from tokendrop_jax.data import demo_corpus as m; "
          "json.dump(m._documents_here(int(sys.argv[1])), sys.stdout)")
  cmd = [sys.executable, "-c", code, str(max_bytes)]
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      p for p in (root, os.environ.get("PYTHONPATH")) if p))
  proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, check=False)
  if proc.returncode:
    raise RuntimeError(f"building the demo corpus failed: `{shlex.join(cmd)}` (in {root}) "
                       f"exited with {proc.returncode}:\n{proc.stderr[-4000:]}")
  return json.loads(proc.stdout)


def _documents_here(max_bytes: int) -> list[list[str]]:
  """`demo_documents`, in this interpreter."""
  out, size = [], 0
  for doc in _all_documents():
    if size >= max_bytes:
      break
    if doc:
      out.append(doc)
      size += sum(len(s.encode("utf-8")) + 1 for s in doc) + 1
  return out


def _write_docs(path: str, docs: list[list[str]]) -> None:
  files.atomic_write(path, "\n\n".join("\n".join(doc) for doc in docs) + "\n")


def write_demo_corpus(out_dir: str, max_bytes: int = 1_600_000,
                      valid_every: int = 20) -> tuple[str, str]:
  """Writes `train.txt` and `valid.txt` under `out_dir` (local or gs://) ->
  (train_path, valid_path)."""
  docs = demo_documents(max_bytes)
  if len(docs) < 2:
    raise RuntimeError("found no standard-library text to build the demo corpus from")
  valid = [d for i, d in enumerate(docs) if i % valid_every == valid_every - 1]
  train = [d for i, d in enumerate(docs) if i % valid_every != valid_every - 1]
  train_path = files.join(out_dir, "train.txt")
  valid_path = files.join(out_dir, "valid.txt")
  _write_docs(train_path, train)
  _write_docs(valid_path, valid)
  return train_path, valid_path


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string("out_dir", None, "Where to write train.txt and valid.txt.", required=True)
  flags.DEFINE_integer("max_bytes", 1_600_000, "About how much text to write.")

  def _main(argv):
    del argv
    train, valid = write_demo_corpus(flags.FLAGS.out_dir, flags.FLAGS.max_bytes)
    for p in (train, valid):
      print(f"{p}: {files.size_and_mtime(p)[0]:,} bytes")

  app.run(_main)
