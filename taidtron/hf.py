"""Hugging Face Llama / Qwen2 <-> taidtron (megatron-core GPTModel): the key map, the tensor transforms, configs.

A separate module from `checkpoint.py` because nothing here touches dist_checkpointing or a process group: it is
pure tensor relabelling plus config translation, used only by `tools/convert.py` and the conversion tests, and it
keeps transformers/safetensors out of the training import path.

Every weight has up to three names:

    megatron  the parameter name in a local-spec GPTModel built at tp=pp=1 (`decoder.layers.{i}.` prefixed for
              per-layer entries): what `tools/convert.py import` fills.
    dcp       the key megatron's `sharded_state_dict` writes to a dist checkpoint (layers stacked along a new dim 0,
              layer norms under Transformer Engine's fused names): what `tools/convert.py export` reads. These keys
              and their global shapes do not depend on the tp/pp layout or the TE/local spec of the run that saved.
    hf        the Hugging Face names (`model.layers.{i}.` prefixed for per-layer entries).

`kind` says how HF tensors combine into the megatron tensor:
    copy     one tensor, unchanged
    qkv      q, k, v projections interleaved per key/value group: for each group [its q heads, k, v]
    gate_up  SwiGLU gate and up projections concatenated: [gate; up]
    vocab    embedding / output rows: padded with zero rows to the padded vocabulary on import, cut on export
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from taidtron.config import ModelConfig

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")
HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}


class UnsupportedModelError(ValueError):
    """A Hugging Face model this converter cannot represent exactly."""


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
    Entry("self_attention.linear_qkv.weight", "self_attention.linear_qkv.weight",
          ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"), "qkv"),
    Entry("self_attention.linear_qkv.bias", "self_attention.linear_qkv.bias",
          ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"), "qkv", "qkv_bias"),
    Entry("self_attention.linear_proj.weight", "self_attention.linear_proj.weight", ("self_attn.o_proj.weight",)),
    Entry("pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight", ("post_attention_layernorm.weight",)),
    Entry("mlp.linear_fc1.weight", "mlp.linear_fc1.weight", ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
          "gate_up"),
    Entry("mlp.linear_fc2.weight", "mlp.linear_fc2.weight", ("mlp.down_proj.weight",)),
)
"""Per decoder layer; megatron names are under `decoder.layers.{i}.`, dcp keys under `decoder.layers.` (stacked),
HF names under `model.layers.{i}.`."""

GLOBAL_ENTRIES: tuple[Entry, ...] = (
    Entry("embedding.word_embeddings.weight", "embedding.word_embeddings.weight", ("model.embed_tokens.weight",),
          "vocab"),
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
                out.append((entry, i, LAYER_PREFIX_MEGATRON.format(i=i) + entry.megatron,
                            LAYER_PREFIX_DCP + entry.dcp, tuple(LAYER_PREFIX_HF.format(i=i) + h for h in entry.hf)))
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
        return [(model.num_attention_heads * d, *rest), (model.num_query_groups * d, *rest),
                (model.num_query_groups * d, *rest)]
    if entry.kind == "gate_up":
        return [(megatron_shape[0] // 2, *rest)] * 2
    if entry.kind == "vocab":
        return [(model.vocab_size, *rest)]
    return [tuple(megatron_shape)]


# ----------------------------------------------------------------------------------------------------------
# configs


def read_hf_config(config_json: str | Path | dict) -> dict:
    if isinstance(config_json, dict):
        return dict(config_json)
    path = Path(config_json)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: a Hugging Face model directory needs its config.json.")
    return json.loads(path.read_text())


def rope_theta(hf: dict) -> float:
    """RoPE base from a transformers 4 (`rope_theta`, `rope_scaling`) or 5 (`rope_parameters`) config."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or params.get("type") or scaling.get("rope_type") or scaling.get("type")
    if rope_type not in (None, "default"):
        raise UnsupportedModelError(f"RoPE scaling {rope_type!r} is not supported (taidtron's RoPE is the plain, "
                                    f"unscaled one); convert a model whose config has no rope_scaling.")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def model_config_from_hf(config_json: str | Path | dict) -> ModelConfig:
    """The taidtron ModelConfig of a Hugging Face Llama / Qwen2 config.json (path, directory or parsed dict).
    Raises UnsupportedModelError naming what does not fit (other model types, sliding windows, biases, ...)."""
    hf = read_hf_config(config_json)
    model_type = hf.get("model_type")
    architectures = hf.get("architectures") or []
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"model_type={model_type!r} ({', '.join(architectures) or 'no architectures listed'}) is not supported: "
            f"taidtron converts Llama (model_type 'llama', LlamaForCausalLM) and Qwen2 (model_type 'qwen2', "
            f"Qwen2ForCausalLM) decoders with RMSNorm, SwiGLU, plain RoPE and GQA.")
    problems = []
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={hf['hidden_act']!r} (only 'silu', i.e. SwiGLU)")
    if model_type == "qwen2" and hf.get("use_sliding_window", False):
        problems.append(f"use_sliding_window=true (sliding_window={hf.get('sliding_window')}); only full attention")
    if model_type == "llama" and hf.get("attention_bias", False):
        problems.append("attention_bias=true (Llama puts a bias on q/k/v and o_proj; only Qwen2's q/k/v bias)")
    if hf.get("mlp_bias", False):
        problems.append("mlp_bias=true (the MLP has no biases)")
    layer_types = hf.get("layer_types") or []
    if any(t != "full_attention" for t in layer_types):
        problems.append(f"layer_types={sorted(set(layer_types))} (only full_attention)")
    if hf.get("tie_word_embeddings") is None and "tie_word_embeddings" in hf:
        problems.append("tie_word_embeddings=null")
    heads = int(hf["num_attention_heads"])
    hidden = int(hf["hidden_size"])
    head_dim = hf.get("head_dim")
    if head_dim is not None and int(head_dim) * heads != hidden:
        problems.append(f"head_dim={head_dim} with {heads} heads != hidden_size={hidden} (head_dim must be "
                        f"hidden_size / num_attention_heads)")
    if problems:
        raise UnsupportedModelError(f"this {model_type} model cannot be converted exactly: " + "; ".join(problems)
                                    + ". Supported: Llama / Qwen2 decoders with full causal attention, plain RoPE, "
                                    "SwiGLU, RMSNorm and (Qwen2 only) a bias on q/k/v.")
    theta = rope_theta(hf)
    return ModelConfig(
        family=model_type,
        num_layers=int(hf["num_hidden_layers"]),
        hidden_size=hidden,
        num_attention_heads=heads,
        num_query_groups=int(hf.get("num_key_value_heads") or heads),
        ffn_hidden_size=int(hf["intermediate_size"]),
        vocab_size=int(hf["vocab_size"]),
        rotary_base=theta,
        norm_epsilon=float(hf.get("rms_norm_eps", 1e-6)),
        add_qkv_bias=model_type == "qwen2",
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


def model_yaml(model: ModelConfig, init: str) -> str:
    """The `student:` / `teacher:` section a user pastes into a config to use a converted checkpoint."""
    import yaml

    fields = {k: v for k, v in model.__dict__.items() if k != "init"}
    fields["init"] = init
    return yaml.safe_dump(fields, sort_keys=False)


def hf_config(model: ModelConfig, *, dtype: torch.dtype, base: dict | None = None,
              max_position_embeddings: int = 4096, bos_token_id: int | None = None,
              eos_token_id: int | None = None, pad_token_id: int | None = None):
    """config.json of `model` for transformers, written with its own config class (so the format is the installed
    version's). `base`, an original HF config (from an import), supplies the fields taidtron does not model
    (max_position_embeddings, special token ids, ...)."""
    from transformers import AutoConfig

    base = dict(base or {})
    kwargs: dict[str, Any] = {
        "max_position_embeddings": base.get("max_position_embeddings", max_position_embeddings),
        "bos_token_id": base.get("bos_token_id", bos_token_id),
        "eos_token_id": base.get("eos_token_id", eos_token_id),
        "pad_token_id": base.get("pad_token_id", pad_token_id),
        "initializer_range": base.get("initializer_range", 0.02),
    }
    kwargs.update(
        architectures=[HF_ARCHITECTURES[model.family]],
        vocab_size=model.vocab_size,
        hidden_size=model.hidden_size,
        intermediate_size=model.ffn_hidden_size,
        num_hidden_layers=model.num_layers,
        num_attention_heads=model.num_attention_heads,
        num_key_value_heads=model.num_query_groups,
        hidden_act="silu",
        rms_norm_eps=model.norm_epsilon,
        tie_word_embeddings=model.tie_embeddings,
        rope_theta=model.rotary_base,
        attention_dropout=0.0,
    )
    if model.family == "qwen2":
        kwargs.update(use_sliding_window=False)
    else:
        kwargs.update(attention_bias=False, mlp_bias=False)
    config = AutoConfig.for_model(model.family, **kwargs)
    # transformers 5 moved rope_theta into rope_parameters; make sure the base survived either way.
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict):
        params["rope_theta"] = model.rotary_base
    if hasattr(config, "dtype"):  # transformers >= 4.56 / 5
        config.dtype = dtype
    else:
        config.torch_dtype = dtype
    return config
