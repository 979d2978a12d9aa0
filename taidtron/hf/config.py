"""Hugging Face config.json <-> taidtron ModelConfig: what a Llama / Qwen2 config means here, what is refused, and
the config.json an export writes (with transformers' own config class, so the format is the installed version's)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from taidtron.config import ModelConfig
from taidtron.hf.errors import ConvertError, UnsupportedModelError

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")
HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def read_hf_config(config_json: str | Path | dict) -> dict:
    """A Hugging Face config.json as a dict: from a dict, the file, or the model directory holding it."""
    if isinstance(config_json, dict):
        return dict(config_json)
    path = Path(config_json)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ConvertError(f"{path} does not exist: a Hugging Face model directory needs its config.json.")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConvertError(f"{path} is not readable JSON ({exc}).") from None
    if not isinstance(config, dict):
        raise ConvertError(f"{path} does not hold a JSON object.")
    return config


def rope_theta(hf: dict) -> float:
    """RoPE base from a transformers 4 (`rope_theta`, `rope_scaling`) or 5 (`rope_parameters`) config."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or params.get("type") or scaling.get("rope_type") or scaling.get("type")
    if rope_type not in (None, "default"):
        raise UnsupportedModelError(
            f"RoPE scaling {rope_type!r} is not supported (taidtron's RoPE is the plain, "
            f"unscaled one); convert a model whose config has no rope_scaling."
        )
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
            f"Qwen2ForCausalLM) decoders with RMSNorm, SwiGLU, plain RoPE and GQA."
        )
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
        problems.append(
            f"head_dim={head_dim} with {heads} heads != hidden_size={hidden} (head_dim must be "
            f"hidden_size / num_attention_heads)"
        )
    if problems:
        raise UnsupportedModelError(
            f"this {model_type} model cannot be converted exactly: "
            + "; ".join(problems)
            + ". Supported: Llama / Qwen2 decoders with full causal attention, plain RoPE, "
            "SwiGLU, RMSNorm and (Qwen2 only) a bias on q/k/v."
        )
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


def hf_config(
    model: ModelConfig,
    *,
    dtype: torch.dtype,
    base: dict | None = None,
    max_position_embeddings: int = 4096,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
):
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
