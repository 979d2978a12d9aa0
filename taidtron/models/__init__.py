"""Teacher and student: megatron-core GPT models (Llama / Qwen2) and the pair that runs both per pipeline stage."""

from taidtron.models.gpt import build_gpt, layer_spec, pipeline_config, transformer_config
from taidtron.models.pair import DistillationPair

__all__ = ["DistillationPair", "build_gpt", "layer_spec", "pipeline_config", "transformer_config"]
