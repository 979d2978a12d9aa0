"""`get_loss(taid_cfg)`: the config section bound into the objective the trainer calls."""

from __future__ import annotations

import pytest
import torch

from taidtron.config import ConfigError, TAIDConfig
from taidtron.losses import LOSSES, OBJECTIVES, get_loss, objective_needs_teacher, vocab_parallel_lm_loss

from .loss_reference import VOCAB, make_labels, make_logits

SEQ, BATCH = 5, 2


def _inputs(seed: int = 0):
    student, teacher = make_logits((SEQ, BATCH), "wide", seed=seed)
    return student, teacher, make_labels((SEQ, BATCH), seed=seed + 1)


def test_config_accepts_exactly_the_objectives_of_the_registry():
    for name in OBJECTIVES:
        TAIDConfig(loss=name)
    with pytest.raises(ConfigError, match="taid.loss='kl' is unknown"):
        TAIDConfig(loss="kl")
    with pytest.raises(
        ValueError, match="choose one of taid, fkl, rkl, tvd, skew_fkl, skew_rkl, js, akl, ctkd, dkd, lm"
    ):
        objective_needs_teacher("kl")


@pytest.mark.parametrize(
    "name, options", [("skew_fkl", {"skew": 0.3}), ("skew_rkl", {"skew": 0.2}), ("js", {"beta": 0.7}), ("rkl", {})]
)
def test_options_of_the_section_are_bound(name, options):
    cfg = TAIDConfig(loss=name, skew=options.get("skew", 0.1), js_beta=options.get("beta", 0.5), chunk_tokens=3)
    student, teacher, labels = _inputs(1)
    terms = get_loss(cfg)(student, teacher, labels, t=0.4, vocab_size=VOCAB, group=None)
    want = LOSSES[name](student, teacher, t=0.4, vocab_size=VOCAB, group=None, **options)
    torch.testing.assert_close(terms.total, want)
    assert terms.lm is None and terms.distill is terms.total


def test_only_taid_uses_t_and_only_lm_runs_without_a_teacher():
    for name in OBJECTIVES:
        objective = get_loss(TAIDConfig(loss=name))
        assert objective.uses_t == (name == "taid")
        assert objective.needs_teacher == (name != "lm") == objective_needs_teacher(name)


def test_lm_objective_is_the_next_token_loss_without_teacher_logits():
    student, _, labels = _inputs(2)
    terms = get_loss(TAIDConfig(loss="lm"))(student, None, labels, t=0.4, vocab_size=VOCAB, group=None)
    torch.testing.assert_close(terms.total, vocab_parallel_lm_loss(student, labels, vocab_size=VOCAB))
    assert terms.distill is None and terms.lm is terms.total


def test_lm_loss_weight_adds_weighted_cross_entropy_and_leaves_the_distillation_term_alone():
    student, teacher, labels = _inputs(3)
    pure = get_loss(TAIDConfig())(student, teacher, labels, t=0.4, vocab_size=VOCAB, group=None)
    mixed = get_loss(TAIDConfig(lm_loss_weight=0.25))(student, teacher, labels, t=0.4, vocab_size=VOCAB, group=None)
    lm = vocab_parallel_lm_loss(student, labels, vocab_size=VOCAB)
    torch.testing.assert_close(mixed.distill, pure.distill)
    torch.testing.assert_close(mixed.lm, lm)
    torch.testing.assert_close(mixed.total, pure.distill + 0.25 * lm)
    with pytest.raises(ConfigError, match="lm_loss_weight"):
        TAIDConfig(lm_loss_weight=-1.0)


def test_loss_impl_is_bound_for_the_fused_losses_and_refused_for_the_others():
    student, teacher, labels = _inputs(4)
    torch_path = get_loss(TAIDConfig(loss_impl="torch"))(student, teacher, labels, t=0.4, vocab_size=VOCAB, group=None)
    auto = get_loss(TAIDConfig())(student, teacher, labels, t=0.4, vocab_size=VOCAB, group=None)
    torch.testing.assert_close(torch_path.total, auto.total)  # auto is the torch path on CPU
    assert get_loss(TAIDConfig(loss="fkl", loss_impl="torch")).impl == "torch"
    with pytest.raises(ValueError, match="taid.loss_impl=torch applies to the fused losses"):
        get_loss(TAIDConfig(loss="rkl", loss_impl="torch"))
    with pytest.raises(ConfigError, match="taid.loss_impl='cuda'"):
        TAIDConfig(loss_impl="cuda")
