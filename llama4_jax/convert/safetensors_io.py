"""Minimal safetensors reader/writer over numpy (memory-mapped reads, bfloat16 through ml_dtypes).

Written here rather than using `safetensors.numpy`, which cannot represent bfloat16, the dtype real Llama 4
checkpoints ship in. Format: 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}},
then the raw little-endian tensor bytes.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Iterable, Mapping

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn), "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}
_NAMES = {v: k for k, v in _DTYPES.items()}


class CheckpointError(ValueError):
  """A checkpoint file is unreadable, or a tensor is missing, unexpected or mis-shaped; names the key and file."""


def read_header(path: str) -> tuple[dict, int]:
  """(header dict without __metadata__, byte offset of the data section)."""
  try:
    with open(path, "rb") as f:
      raw = f.read(8)
      if len(raw) != 8:
        raise CheckpointError(f"{path}: file too short to be safetensors")
      (n,) = struct.unpack("<Q", raw)
      if n > os.path.getsize(path):
        raise CheckpointError(f"{path}: header length {n} exceeds file size; truncated or not safetensors")
      header = json.loads(f.read(n))
  except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{path}: cannot read safetensors header ({e})") from e
  header.pop("__metadata__", None)
  return header, 8 + n


def load_file(path: str) -> dict[str, np.ndarray]:
  """All tensors of one file as read-only memory-mapped numpy arrays."""
  header, start = read_header(path)
  size = os.path.getsize(path)
  mm = np.memmap(path, dtype=np.uint8, mode="r") if size > start else np.zeros((0,), np.uint8)
  out = {}
  for name, info in header.items():
    if info.get("dtype") not in _DTYPES:
      raise CheckpointError(f"{path}: tensor '{name}' has unsupported dtype {info.get('dtype')!r}")
    lo, hi = info["data_offsets"]
    dtype, shape = _DTYPES[info["dtype"]], tuple(info["shape"])
    if start + hi > size or hi - lo != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
      raise CheckpointError(f"{path}: tensor '{name}' data is truncated or inconsistent with its shape {shape}")
    out[name] = mm[start + lo:start + hi].view(dtype).reshape(shape)
  return out


def save_file(tensors: Mapping[str, np.ndarray], path: str, metadata: Mapping[str, str] | None = None) -> None:
  """Writes tensors (C-contiguous little-endian) in safetensors format."""
  header, offset, arrays = {}, 0, []
  for name in sorted(tensors):
    arr = np.ascontiguousarray(tensors[name]).reshape(np.shape(tensors[name]))  # keep 0-d tensors 0-d
    if arr.dtype not in _NAMES:
      raise CheckpointError(f"tensor '{name}': dtype {arr.dtype} cannot be written to safetensors")
    header[name] = {"dtype": _NAMES[arr.dtype], "shape": list(arr.shape),
                    "data_offsets": [offset, offset + arr.nbytes]}
    offset += arr.nbytes
    arrays.append(arr)
  header["__metadata__"] = dict(metadata or {"format": "pt"})
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # keep the data section 8-byte aligned
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for arr in arrays:
      f.write(arr.tobytes())


def shard(names_and_sizes: Iterable[tuple[str, int]], max_bytes: int) -> list[list[str]]:
  """Greedy split of tensor names into shards of at most `max_bytes` (a larger single tensor gets its own)."""
  shards, current, used = [], [], 0
  for name, nbytes in names_and_sizes:
    if current and used + nbytes > max_bytes:
      shards.append(current)
      current, used = [], 0
    current.append(name)
    used += nbytes
  if current:
    shards.append(current)
  return shards
