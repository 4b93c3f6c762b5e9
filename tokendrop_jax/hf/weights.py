"""The weights of a Hugging Face folder: which files, and reading them without pickle.

A small safetensors reader of our own because safetensors' numpy loader
refuses bfloat16, the usual dtype of recent checkpoints; pickled checkpoints
(pytorch_model.bin, ...) are refused with how to convert them.
"""
from __future__ import annotations

import json
from typing import Iterable

import numpy as np

from tokendrop_jax import files
from tokendrop_jax.hf.params import canonical

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5",
           "flax_model.msgpack")

CONVERT_HINT = (
    "Convert it to safetensors once (transformers and torch needed only for this):\n"
    "  from transformers import AutoModelForMaskedLM\n"
    "  model = AutoModelForMaskedLM.from_pretrained('{d}')\n"
    "  model.save_pretrained('{d}', safe_serialization=True)\n"
    "(use AutoModel for a checkpoint without an MLM head)")

# safetensors dtype names -> numpy (bfloat16 through ml_dtypes, which jax brings).
_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                       "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
                       "U8": "uint8", "BOOL": "bool"}


def weight_files(hf_dir: str) -> list[str]:
  """The safetensors file(s) of DIR; refuses pickled checkpoints with how to convert them."""
  index = files.join(hf_dir, WEIGHTS_INDEX)
  if files.isfile(index):
    try:
      weight_map = json.loads(files.read_bytes(index).decode("utf-8"))["weight_map"]
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(f"{index}: not a safetensors index (no weight_map): {e}") from None
    return [files.join(hf_dir, name) for name in sorted(set(weight_map.values()))]
  single = files.join(hf_dir, WEIGHTS)
  if files.isfile(single):
    return [single]
  pickled = [n for n in PICKLED if files.exists(files.join(hf_dir, n))]
  if pickled:
    raise ValueError(f"--hf_dir={hf_dir} has {pickled[0]} but no {WEIGHTS}: pickled "
                     "checkpoints are never loaded (unpickling runs code). "
                     + CONVERT_HINT.format(d=hf_dir))
  raise FileNotFoundError(f"--hf_dir={hf_dir} has neither {WEIGHTS} nor {WEIGHTS_INDEX}")


def _load_safetensors(data: bytes) -> dict[str, np.ndarray]:
  """{name: array} of one safetensors file: an 8-byte header length, a JSON header of
  {name: {dtype, shape, data_offsets}}, then the bytes. bfloat16 tensors (the usual
  dtype of recent checkpoints) are read too, which safetensors' numpy loader refuses."""
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  n = int.from_bytes(data[:8], "little")
  header = json.loads(data[8:8 + n])
  body = memoryview(data)[8 + n:]
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    kind = _SAFETENSORS_DTYPES.get(info["dtype"])
    if kind is None:
      raise ValueError(f"tensor {name} has dtype {info['dtype']}, which this reader lacks")
    dtype = ml_dtypes.bfloat16 if kind == "bfloat16" else np.dtype(kind)
    start, end = info["data_offsets"]
    out[name] = np.frombuffer(body[start:end], dtype=dtype).reshape(info["shape"])
  return out


def read_tensors(paths: Iterable[str]) -> dict[str, np.ndarray]:
  """{canonical name: array} of safetensors files (numpy; bf16/f16/f32/f64 -> float32)."""
  out = {}
  for path in paths:
    if not files.isfile(path):
      raise FileNotFoundError(f"{path}: listed in {WEIGHTS_INDEX} but missing")
    try:
      tensors = _load_safetensors(files.read_bytes(path))
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"{path}: not a readable safetensors file: {e}") from None
    for name, x in tensors.items():
      if name.endswith("position_ids"):  # an int buffer some checkpoints carry (ignored)
        out[canonical(name)] = x
        continue
      if not (np.issubdtype(x.dtype, np.floating) or x.dtype.name == "bfloat16"):
        raise ValueError(f"{path}: tensor {name} has dtype {x.dtype}, expected floats")
      out[canonical(name)] = x.astype(np.float32)
  return out
