"""taidtron: distributed pretraining distillation with TAID on megatron-core."""

__version__ = "0.1.0"
