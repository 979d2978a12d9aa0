"""safetensors files of a Hugging Face model directory: reading one tensor at a time, and writing shards.

Reading: `model.safetensors`, or the shards listed in `model.safetensors.index.json`, one tensor at a time (its file
opened for the read and closed after); nothing but the headers is read before `get`. Writing: shards planned from
tensor sizes before any tensor exists (so their names, `model-0000k-of-0000n.safetensors`, are final), filled in
order, with the index transformers reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from taidtron.hf.errors import ConvertError

SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
INDEX_FILE = "model.safetensors.index.json"


class SafetensorsReader:
    """Tensors of an HF directory by name, from one file or from shards listed in model.safetensors.index.json.

    Every read opens its file and closes it again: safetensors maps the file into memory, and the pages a mapping
    has read count as this process's memory for as long as it stays open, so shards left open would make the
    memory of an import grow with the model. Headers (dtype, shape) are read once per file."""

    def __init__(self, hf_dir: Path):
        index = hf_dir / INDEX_FILE
        self._headers: dict[str, tuple[str, tuple[int, ...]]] = {}
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ConvertError(f"{index} is not a valid safetensors index ({exc}).") from None
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not (hf_dir / f).is_file()]
            if missing:
                raise ConvertError(f"{hf_dir} is missing shard(s) {', '.join(missing)} listed in {index.name}.")
            self.location = {name: hf_dir / file for name, file in weight_map.items()}
        else:
            paths = sorted(hf_dir.glob("*.safetensors"))
            if not paths:
                other = sorted(p.name for p in hf_dir.glob("*.bin")) + sorted(p.name for p in hf_dir.glob("*.pth"))
                hint = (
                    f" It has {', '.join(other[:3])}: re-save the model with safetensors "
                    f"(model.save_pretrained(dir, safe_serialization=True))."
                    if other
                    else ""
                )
                raise ConvertError(f"{hf_dir} holds no *.safetensors weights.{hint}")
            self.location = {}
            for path in paths:
                self.location.update(dict.fromkeys(self._read_header(path), path))

    def _open(self, file: Path):
        from safetensors import safe_open

        try:
            return safe_open(str(file), framework="pt")
        except Exception as exc:  # safetensors raises its own error types for a damaged file
            raise ConvertError(
                f"{file} is not a readable safetensors file ({type(exc).__name__}: {exc}); download it again."
            ) from None

    def _read_header(self, file: Path) -> list[str]:
        """The tensor names of `file`, recording each one's dtype and shape."""
        with self._open(file) as f:
            names = list(f.keys())
            for name in names:
                info = f.get_slice(name)
                self._headers[name] = (info.get_dtype(), tuple(info.get_shape()))
        return names

    def _header(self, name: str) -> tuple[str, tuple[int, ...]]:
        if name not in self._headers:
            self._read_header(self.location[name])
        return self._headers[name]

    def dtype(self, name: str) -> str:
        """The safetensors dtype name (`F32`, `BF16`, ...), from the file's header."""
        return self._header(name)[0]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._header(name)[1]

    def get(self, name: str) -> torch.Tensor:
        with self._open(self.location[name]) as f:
            return f.get_tensor(name)


def parse_size(text: str) -> int:
    """`5GB`, `150KB`, `2GiB`, `1000` -> bytes."""
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}
    t = text.strip().upper()
    try:
        for unit, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
            if t.endswith(unit):
                return int(float(t[: -len(unit)]) * factor)
        return int(t)
    except ValueError:
        raise ConvertError(f"--max-shard-size {text!r} is not a size; write e.g. 5GB, 500MB or 2GiB.") from None


class ShardWriter:
    """Writes tensors, in a fixed order, into safetensors shards of at most `limit` bytes each.

    `sizes` are the bytes of each item (one or more tensors written together) in the order they will be added, so
    every shard's name is known before the first tensor is loaded. Memory: the tensors of one shard."""

    def __init__(self, directory: Path, sizes: list[int], limit: int):
        shard_bytes: list[int] = [0]
        self._shard_of: list[int] = []
        for nbytes in sizes:
            if shard_bytes[-1] and shard_bytes[-1] + nbytes > limit:
                shard_bytes.append(0)
            shard_bytes[-1] += nbytes
            self._shard_of.append(len(shard_bytes) - 1)
        self.names = [f"model-{i + 1:05d}-of-{len(shard_bytes):05d}.safetensors" for i in range(len(shard_bytes))]
        self.total_bytes = sum(shard_bytes)
        self._directory = directory
        self._pending: dict[str, torch.Tensor] = {}
        self._current = 0
        self._next_item = 0
        self.weight_map: dict[str, str] = {}

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        """The next item's tensors, by HF name."""
        shard = self._shard_of[self._next_item]
        self._next_item += 1
        if shard != self._current:
            self._flush()
            self._current = shard
        for name, tensor in tensors.items():
            self._pending[name] = tensor
            self.weight_map[name] = self.names[shard]

    def _flush(self) -> None:
        from safetensors.torch import save_file

        save_file(self._pending, str(self._directory / self.names[self._current]), metadata={"format": "pt"})
        self._pending = {}

    def close(self) -> None:
        """Write the last shard and the index."""
        assert self._next_item == len(self._shard_of), "fewer items were added than planned"
        self._flush()
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(self.weight_map.items()))}
        (self._directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
