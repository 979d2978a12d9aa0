"""Hugging Face Llama / Qwen2 <-> taidtron checkpoints, callable in-process:

    from taidtron.hf import export_hf, import_hf
    meta = import_hf("/models/Qwen2-1.5B", "ckpt/qwen2-1.5b")            # -> CheckpointMeta
    summary = export_hf("runs/taid/checkpoints", "hf/taid-1.5b")         # -> ExportSummary

    keymap.py   the declarative key map (megatron / dist-checkpoint / HF names) and the tensor transforms
    config.py   HF config.json <-> ModelConfig (what is supported), the config.json an export writes
    shards.py   safetensors reading (single file or sharded) and writing (planned shards plus the index)
    convert.py  import_hf, export_hf, the tokenizer files an export ships
    errors.py   ConvertError, UnsupportedModelError

`tools/convert.py` is the command-line front end. The conversion runs on CPU in the calling process (a gloo world
of one): call it from a process that sees no GPU (the command hides them) and has no torch.distributed world yet.
"""

from taidtron.hf.config import hf_config, model_config_from_hf, model_yaml, read_hf_config, rope_theta
from taidtron.hf.convert import ExportSummary, export_hf, import_hf
from taidtron.hf.errors import ConvertError, UnsupportedModelError

__all__ = [
    "ConvertError",
    "ExportSummary",
    "UnsupportedModelError",
    "export_hf",
    "hf_config",
    "import_hf",
    "model_config_from_hf",
    "model_yaml",
    "read_hf_config",
    "rope_theta",
]
