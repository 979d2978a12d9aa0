"""GPU worker (one process): Transformer Engine's layer spec against the local spec on one set of weights. A model
with the local spec (SDPA attention) is saved as a taidtron checkpoint, a model with TE's spec (`attention=auto`
where TE is usable) loads it, TE's missing `_extra_state` tolerated; both compute logits of the same tokens in bf16.
Reports `te_usable` and, when it is, the largest logit difference relative to the largest logit."""

from __future__ import annotations

import tempfile

import torch

from taidtron import checkpoint
from taidtron.config import ParallelConfig
from taidtron.distributed import destroy_distributed, init_distributed, seed_everything
from taidtron.models import build_gpt
from taidtron.models.gpt import transformer_engine_usable
from tests.support import report, tiny_model_config

SEQ = 256


def main() -> None:
    if not transformer_engine_usable():
        report(te_usable=False)
        return
    ctx = init_distributed(ParallelConfig())
    model = tiny_model_config()
    models = {}
    for attention in ("sdpa", "auto"):
        seed_everything(3, ctx)
        models[attention] = build_gpt(
            tiny_model_config(attention=attention),
            ParallelConfig(),
            padded_vocab_size=model.vocab_size,
            max_seq_length=SEQ,
            pp_rank=0,
            params_dtype=torch.bfloat16,
            device=ctx.device,
        )
    with tempfile.TemporaryDirectory() as tmp:
        meta = checkpoint.CheckpointMeta(
            model=tiny_model_config(attention="sdpa"),
            padded_vocab_size=model.vocab_size,
            source=checkpoint.WeightsSource(kind="init", description="te_worker"),
        )
        checkpoint.save_checkpoint(tmp, 0, model=models["sdpa"], meta=meta, ctx=ctx)
        checkpoint.load_model_weights(models["auto"], tmp, group=ctx.dp_group)
    tokens = torch.randint(0, model.vocab_size, (2, SEQ), device=ctx.device)
    positions = torch.arange(SEQ, device=ctx.device).expand(2, -1)
    with torch.no_grad():
        local, te = (models[k](tokens, positions, None).float() for k in ("sdpa", "auto"))
    cores = {type(layer.self_attention.core_attention).__name__ for layer in models["auto"].decoder.layers}
    report(
        te_usable=True,
        te_core_attention=sorted(cores),
        max_error_relative_to_max=((te - local).abs().max() / local.abs().max()).item(),
    )
    destroy_distributed()


if __name__ == "__main__":
    main()
