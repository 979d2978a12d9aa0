"""The Hugging Face Llama / Qwen2 <-> megatron-core GPTModel key map and its tensor transforms (no I/O).

Every weight has up to three names:

    megatron  the parameter name in a local-spec GPTModel built at tp=pp=1 (`decoder.layers.{i}.` prefixed for
              per-layer entries): what `import_hf` fills.
    dcp       the key megatron's `sharded_state_dict` writes to a dist checkpoint (layers stacked along a new dim 0,
              layer norms under Transformer Engine's fused names): what `export_hf` reads. These keys and their
              global shapes do not depend on the tp/pp layout or the TE/local spec of the run that saved.
    hf        the Hugging Face names (`model.layers.{i}.` prefixed for per-layer entries).

`kind` says how HF tensors combine into the megatron tensor:
    copy     one tensor, unchanged
    qkv      q, k, v projections interleaved per key/value group: for each group [its q heads, k, v]
    gate_up  SwiGLU gate and up projections concatenated: [gate; up]
    vocab    embedding / output rows: padded with zero rows to the padded vocabulary on import, cut on export
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from taidtron.config import ModelConfig


@dataclass(frozen=True)
class Entry:
    megatron: str
    dcp: str
    hf: tuple[str, ...]
    kind: str = "copy"
    when: str = "always"
    """`always`, `qkv_bias` (only when the model has a QKV bias) or `untied` (only with separate output weights)."""


LAYER_ENTRIES: tuple[Entry, ...] = (
    Entry("input_layernorm.weight", "self_attention.linear_qkv.layer_norm_weight", ("input_layernorm.weight",)),
    Entry(
        "self_attention.linear_qkv.weight",
        "self_attention.linear_qkv.weight",
        ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
        "qkv",
    ),
    Entry(
        "self_attention.linear_qkv.bias",
        "self_attention.linear_qkv.bias",
        ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"),
        "qkv",
        "qkv_bias",
    ),
    Entry("self_attention.linear_proj.weight", "self_attention.linear_proj.weight", ("self_attn.o_proj.weight",)),
    Entry("pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight", ("post_attention_layernorm.weight",)),
    Entry("mlp.linear_fc1.weight", "mlp.linear_fc1.weight", ("mlp.gate_proj.weight", "mlp.up_proj.weight"), "gate_up"),
    Entry("mlp.linear_fc2.weight", "mlp.linear_fc2.weight", ("mlp.down_proj.weight",)),
)
"""Per decoder layer; megatron names are under `decoder.layers.{i}.`, dcp keys under `decoder.layers.` (stacked),
HF names under `model.layers.{i}.`."""

GLOBAL_ENTRIES: tuple[Entry, ...] = (
    Entry(
        "embedding.word_embeddings.weight", "embedding.word_embeddings.weight", ("model.embed_tokens.weight",), "vocab"
    ),
    Entry("decoder.final_layernorm.weight", "decoder.final_layernorm.weight", ("model.norm.weight",)),
    Entry("output_layer.weight", "output_layer.weight", ("lm_head.weight",), "vocab", "untied"),
)

LAYER_PREFIX_MEGATRON = "decoder.layers.{i}."
LAYER_PREFIX_DCP = "decoder.layers."
LAYER_PREFIX_HF = "model.layers.{i}."


def _applies(entry: Entry, model: ModelConfig) -> bool:
    if entry.when == "qkv_bias":
        return bool(model.add_qkv_bias)
    if entry.when == "untied":
        return not model.tie_embeddings
    return True


def key_map(model: ModelConfig) -> list[tuple[Entry, int | None, str, str, tuple[str, ...]]]:
    """Every weight of `model`: (entry, layer or None, megatron name, dcp key, HF names), layers in order."""
    out = []
    for entry in GLOBAL_ENTRIES:
        if _applies(entry, model):
            out.append((entry, None, entry.megatron, entry.dcp, entry.hf))
    for i in range(model.num_layers):
        for entry in LAYER_ENTRIES:
            if _applies(entry, model):
                out.append(
                    (
                        entry,
                        i,
                        LAYER_PREFIX_MEGATRON.format(i=i) + entry.megatron,
                        LAYER_PREFIX_DCP + entry.dcp,
                        tuple(LAYER_PREFIX_HF.format(i=i) + h for h in entry.hf),
                    )
                )
    return out


def expected_hf_keys(model: ModelConfig) -> set[str]:
    return {name for *_, hf in key_map(model) for name in hf}


# ----------------------------------------------------------------------------------------------------------
# tensor transforms (shape comments: h hidden, d head dim, n query heads, g key/value groups, f ffn, V vocab)


def qkv_to_megatron(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, model: ModelConfig) -> torch.Tensor:
    """q [n*d, (h)], k and v [g*d, (h)] -> [g*(n/g + 2)*d, (h)]: per group its q heads, then k, then v. TP splits
    this along dim 0 in whole groups, which is why megatron interleaves per group."""
    g, d = model.num_query_groups, model.kv_channels
    per_group = model.num_attention_heads // g
    rest = q.shape[1:]
    q = q.reshape(g, per_group * d, *rest)
    k = k.reshape(g, d, *rest)
    v = v.reshape(g, d, *rest)
    return torch.cat([q, k, v], dim=1).reshape(-1, *rest).contiguous()


def qkv_from_megatron(qkv: torch.Tensor, model: ModelConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g, d = model.num_query_groups, model.kv_channels
    per_group = model.num_attention_heads // g
    rest = qkv.shape[1:]
    grouped = qkv.reshape(g, (per_group + 2) * d, *rest)
    q, k, v = torch.split(grouped, [per_group * d, d, d], dim=1)
    return tuple(x.reshape(-1, *rest).contiguous() for x in (q, k, v))  # type: ignore[return-value]


def to_megatron(entry: Entry, hf_tensors: list[torch.Tensor], model: ModelConfig, padded_vocab: int) -> torch.Tensor:
    """HF tensor(s) of one entry -> the megatron tensor at tp=1."""
    if entry.kind == "qkv":
        return qkv_to_megatron(*hf_tensors, model)
    if entry.kind == "gate_up":
        return torch.cat(hf_tensors, dim=0)  # [2f, h]: gate rows, then up rows
    (tensor,) = hf_tensors
    if entry.kind == "vocab" and tensor.shape[0] < padded_vocab:
        padding = tensor.new_zeros(padded_vocab - tensor.shape[0], *tensor.shape[1:])
        tensor = torch.cat([tensor, padding], dim=0)  # [V_padded, h]; padding rows zero
    return tensor


def to_hf(entry: Entry, tensor: torch.Tensor, model: ModelConfig) -> list[torch.Tensor]:
    """One megatron tensor (one layer's slice for per-layer entries) -> its HF tensor(s)."""
    if entry.kind == "qkv":
        return list(qkv_from_megatron(tensor, model))
    if entry.kind == "gate_up":
        gate, up = torch.chunk(tensor, 2, dim=0)
        return [gate.contiguous(), up.contiguous()]
    if entry.kind == "vocab":
        return [tensor[: model.vocab_size].contiguous()]  # drop the padding rows
    return [tensor.contiguous()]


def hf_shapes(entry: Entry, megatron_shape: tuple[int, ...], model: ModelConfig) -> list[tuple[int, ...]]:
    """Shapes `to_hf` returns for a megatron tensor of `megatron_shape` (planning shards before loading)."""
    rest = tuple(megatron_shape[1:])
    if entry.kind == "qkv":
        d = model.kv_channels
        return [
            (model.num_attention_heads * d, *rest),
            (model.num_query_groups * d, *rest),
            (model.num_query_groups * d, *rest),
        ]
    if entry.kind == "gate_up":
        return [(megatron_shape[0] // 2, *rest)] * 2
    if entry.kind == "vocab":
        return [(model.vocab_size, *rest)]
    return [tuple(megatron_shape)]
