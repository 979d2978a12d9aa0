"""`LOSSES`: every distillation loss under one call signature, so a trainer calls any of them the same way:

    per_token = LOSSES[name](student_logits, teacher_logits, t=t, vocab_size=V, group=tp_group, labels=labels,
                             **options)

`t` is used by `taid` only and `labels` by `dkd` only (the others ignore them). Options: `chunk_tokens` (all),
`impl` (taid, fkl: "auto", "triton" or "torch"), `skew` (skew_fkl, skew_rkl), `beta` (js), `mu` (akl), `alpha`,
`beta`, `temperature` (dkd) and `temperature` (ctkd: required, a float or a tensor that may require grad). An option
a loss does not take raises TypeError. (`taidtron.losses.get_loss(taid_cfg)` binds the options from the config.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from taidtron.losses.akl import vocab_parallel_akl_loss
from taidtron.losses.ctkd import vocab_parallel_ctkd_loss
from taidtron.losses.dkd import vocab_parallel_dkd_loss
from taidtron.losses.vocab_parallel import (
    vocab_parallel_fkl_loss,
    vocab_parallel_js_loss,
    vocab_parallel_rkl_loss,
    vocab_parallel_skew_fkl_loss,
    vocab_parallel_skew_rkl_loss,
    vocab_parallel_taid_loss,
    vocab_parallel_tvd_loss,
)


def _uniform(fn: Callable, takes: str | None = None) -> Callable:
    """`fn` under the registry's signature; `takes` names the one of t / labels it passes on (positionally)."""

    def loss(student_logits, teacher_logits, *, t, vocab_size, group, labels=None, **options):
        extra = {"t": (t,), "labels": (labels,), None: ()}[takes]
        return fn(student_logits, teacher_logits, *extra, vocab_size=vocab_size, group=group, **options)

    loss.__name__ = loss.__qualname__ = fn.__name__
    ignored = [name for name in ("t", "labels") if name != takes]
    loss.__doc__ = (fn.__doc__ or "") + (
        "\n\nRegistry form: (student_logits, teacher_logits, *, t, vocab_size, group, labels=None, **options); "
        f"{' and '.join(ignored)} {'is' if len(ignored) == 1 else 'are'} ignored."
    )
    return loss


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "taid": _uniform(vocab_parallel_taid_loss, takes="t"),
    "fkl": _uniform(vocab_parallel_fkl_loss),
    "rkl": _uniform(vocab_parallel_rkl_loss),
    "tvd": _uniform(vocab_parallel_tvd_loss),
    "skew_fkl": _uniform(vocab_parallel_skew_fkl_loss),
    "skew_rkl": _uniform(vocab_parallel_skew_rkl_loss),
    "js": _uniform(vocab_parallel_js_loss),
    "akl": _uniform(vocab_parallel_akl_loss),
    "ctkd": _uniform(vocab_parallel_ctkd_loss),
    "dkd": _uniform(vocab_parallel_dkd_loss, takes="labels"),
}
"""name -> loss with the uniform signature (student_logits, teacher_logits, *, t, vocab_size, group, labels=None,
**options)."""
