"""taidtron: distributed pretraining distillation with TAID on megatron-core."""

from taidtron.console import quiet_library_warnings

__version__ = "0.1.0"

quiet_library_warnings()  # before megatron-core is imported by any taidtron module or tool
