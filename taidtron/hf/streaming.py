"""A Hugging Face model's weights as the tensors of a taidtron checkpoint, read from its safetensors only when the
checkpoint writer asks for them: what lets `import_hf` write a model far larger than host memory.

    check_shapes(reader, model_cfg, padded_vocab, params, hf_dir)   # before anything is written
    weights = StreamedWeights(reader, model_cfg, padded_vocab, params_dtype, on_read=bar.update)
    checkpoint.save_model(out, model=meta_model, meta=meta, ctx=ctx, materialize=weights,
                          content_id=weights.content_id)

The writer (`overrides.streamed_save_strategy`) asks for one dist-checkpoint chunk at a time: a whole tensor, or
one layer's slice of a stacked one (SwiGLU's fc1 comes as two chunks, gate and up rows). Each is cut from the
megatron tensor of its weight and layer, built from the HF tensors (`keymap.to_megatron`); the last one built is
kept for the next chunk of the same weight. Memory: about one weight of one layer, whatever the model's size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch

from taidtron.config import ModelConfig
from taidtron.hf.errors import ConvertError
from taidtron.hf.keymap import Entry, key_map, to_megatron
from taidtron.hf.shards import SafetensorsReader


def check_shapes(
    reader: SafetensorsReader, model_cfg: ModelConfig, padded_vocab: int, params: dict[str, tuple[int, ...]], where
) -> None:
    """Every weight the HF tensors give (shapes from the safetensors headers) has the shape of its parameter in
    `params` (megatron name -> shape, the model the config implies); checked before a byte is written."""
    for entry, _, megatron, _, names in key_map(model_cfg):
        shapes = [reader.shape(name) for name in names]
        placeholders = [torch.empty(shape, device="meta") for shape in shapes]
        try:
            given = tuple(to_megatron(entry, placeholders, model_cfg, padded_vocab).shape)
        except RuntimeError:  # q/k/v or gate/up whose sizes do not even combine
            given = None
        if given != params[megatron]:
            raise ConvertError(
                f"{where}: {', '.join(f'{n} {tuple(s)}' for n, s in zip(names, shapes))} do not give {megatron} the "
                f"shape {params[megatron]} its config.json implies; config.json and weights disagree."
            )


class StreamedWeights:
    """`(DCP key, chunk offsets, chunk sizes) -> tensor` for the checkpoint writer (see the module docstring), and
    the content id of the weights it read."""

    def __init__(
        self,
        reader: SafetensorsReader,
        model_cfg: ModelConfig,
        padded_vocab: int,
        params_dtype: torch.dtype,
        on_read: Callable[[], object] = lambda: None,
    ):
        self._reader, self._model, self._padded_vocab, self._dtype = reader, model_cfg, padded_vocab, params_dtype
        self._on_read = on_read
        self._weights: dict[tuple[str, int | None], tuple[int, Entry, tuple[str, ...]]] = {}
        for position, (entry, layer, _, dcp_key, names) in enumerate(key_map(model_cfg)):
            self._weights[(dcp_key, layer)] = (position, entry, names)
        self._digests: dict[int, bytes] = {}
        self._last: tuple[tuple[str, int | None], torch.Tensor] | None = None

    def __call__(self, key: str, offsets: tuple[int, ...], sizes: tuple[int, ...]) -> torch.Tensor:
        stacked = (key, None) not in self._weights  # per-layer weights are stacked along a leading layer axis
        layer = offsets[0] if stacked else None
        value = self._megatron_tensor(key, layer)
        inner = zip(offsets[1:], sizes[1:]) if stacked else zip(offsets, sizes)
        return value[tuple(slice(start, start + size) for start, size in inner)].reshape(sizes)

    def _megatron_tensor(self, key: str, layer: int | None) -> torch.Tensor:
        if self._last is not None and self._last[0] == (key, layer):
            return self._last[1]
        self._last = None  # let the previous weight go before the next is read
        position, entry, names = self._weights[(key, layer)]
        hf_tensors = [self._reader.get(name) for name in names]
        digest = hashlib.sha256()
        for name, tensor in zip(names, hf_tensors):
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            digest.update(tensor.contiguous().view(torch.uint8).numpy())
        self._digests[position] = digest.digest()
        value = to_megatron(entry, hf_tensors, self._model, self._padded_vocab).to(self._dtype)
        del hf_tensors
        self._last = ((key, layer), value)
        self._on_read()
        return value

    def content_id(self) -> str:
        """`sha256:` + a SHA-256 over the SHA-256 of each weight's HF tensors (name, dtype, shape, bytes) in key-map
        order: equal for the same weights however they are sharded or in which order they were written."""
        if len(self._digests) != len(self._weights):
            raise RuntimeError(f"{len(self._weights) - len(self._digests)} weight(s) were never written")
        combined = hashlib.sha256(b"".join(self._digests[i] for i in range(len(self._weights))))
        return "sha256:" + combined.hexdigest()
