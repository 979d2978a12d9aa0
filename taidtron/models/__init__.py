"""Teacher and student: megatron-core GPT models (Llama / Qwen2) and the pair that runs both per pipeline stage."""

from taidtron.overrides.transformer_engine import check_transformer_engine_imports

check_transformer_engine_imports()  # before the imports below load megatron-core

from taidtron.models.attention import SDPAttention  # noqa: E402
from taidtron.models.gpt import (  # noqa: E402
    build_gpt,
    layer_spec,
    resolve_attention,
    transformer_config,
)
from taidtron.models.pair import DistillationPair  # noqa: E402

__all__ = [
    "DistillationPair",
    "SDPAttention",
    "build_gpt",
    "layer_spec",
    "resolve_attention",
    "transformer_config",
]
