"""The official TAID code's other baselines (akl, ctkd, dkd; SakanaAI/TAID `src/distil_losses/`) against float64
references of its formulas (`loss_reference.py`), their contracts, the CTKD temperature and its optimizer state.

TP = 2 and 4 (torchrun, gloo) and the collectives of each are at the bottom (`tp_worker.py baselines|count`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from taidtron.config import OptimConfig, TAIDConfig
from taidtron.losses import (
    LOSSES,
    CurriculumTemperature,
    ObjectiveParameters,
    get_loss,
    vocab_parallel_akl_loss,
    vocab_parallel_ctkd_loss,
    vocab_parallel_dkd_loss,
)
from taidtron.losses.akl import head_threshold, order_keys
from tests.support import run_torchrun

from .loss_reference import (
    PADDED_VOCAB,
    VOCAB,
    akl_head_mask,
    akl_reference,
    akl_sorted_head_mask,
    ctkd_reference,
    dkd_reference,
    make_labels,
    make_logits,
    upstream_grad,
)

SEQ, BATCH = 7, 3  # 21 tokens: chunks of 5 leave a remainder of 1
WORKER = Path(__file__).with_name("tp_worker.py")
FP32 = dict(rtol=1e-5, atol=5e-5)


def _upstream() -> torch.Tensor:
    return upstream_grad(SEQ, BATCH, seed=71)


def _labels(seed: int) -> torch.Tensor:
    """Labels with the first and last id, an ignored token (-100) and an id in the padding (>= VOCAB)."""
    labels = make_labels((SEQ, BATCH), seed=seed)
    labels[2, 1], labels[4, 2] = -100, VOCAB + 3
    return labels


def _run(fn, student, teacher, g, **kwargs):
    s = student.clone().requires_grad_(True)
    loss = fn(s, teacher, vocab_size=VOCAB, chunk_tokens=5, **kwargs)
    (loss * g.to(loss.dtype)).sum().backward()
    return loss, s.grad


def _scatter_back(sorted_mask: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(sorted_mask).scatter(-1, order, sorted_mask)


def _head_margin(teacher, mu: float) -> float:
    """Smallest distance of a token's cumulative teacher mass from mu: where fp32 cannot decide the side."""
    sorted_logits, _ = torch.sort(teacher.double()[..., :VOCAB])
    return (sorted_logits.softmax(-1).cumsum(-1) - mu).abs().min().item()


# ---- akl ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mu", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("scale", ["unit", "wide", "extreme"])
def test_akl_equals_the_official_formula_with_its_head_mask_in_vocabulary_order(scale, mu):
    student, teacher = make_logits((SEQ, BATCH), scale, seed=72)
    assert _head_margin(teacher, mu) > 1e-6  # no token within fp32 rounding of the boundary
    g = _upstream()
    loss, grad = _run(vocab_parallel_akl_loss, student, teacher, g, mu=mu)
    sorted_mask, order = akl_sorted_head_mask(teacher, VOCAB, mu)
    official_head = _scatter_back(sorted_mask, order)  # the official mask, put back on the tokens it was made for
    assert torch.equal(official_head, akl_head_mask(teacher, VOCAB, mu))  # and the sort-free definition agrees
    ref_loss, ref_grad = akl_reference(student, teacher, VOCAB, mu, g, head=official_head)
    assert loss.dtype == torch.float32 and loss.shape == (SEQ, BATCH)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-5)
    assert torch.all(grad[..., VOCAB:] == 0)


def test_akl_does_not_follow_the_official_codes_mask_which_splits_the_gaps_by_token_id():
    """The official code multiplies its head mask, built in sorted order, with the gaps in vocabulary order, so its
    'head' is the highest token *ids*; taidtron applies the mask to the tokens it was computed for."""
    student, teacher = make_logits((SEQ, BATCH), "wide", seed=73)
    sorted_mask, _ = akl_sorted_head_mask(teacher, VOCAB, 0.5)
    head_size = sorted_mask.sum(-1, keepdim=True)
    ids = torch.arange(VOCAB)
    assert torch.equal(sorted_mask, ids >= VOCAB - head_size)  # the literal mask: a suffix of the ids
    ours = vocab_parallel_akl_loss(student, teacher, vocab_size=VOCAB).double()
    literal, _ = akl_reference(student, teacher, VOCAB, 0.5, literal=True)
    fixed, _ = akl_reference(student, teacher, VOCAB, 0.5)
    torch.testing.assert_close(ours, fixed, rtol=1e-5, atol=1e-4)
    assert (ours - literal).abs().max() > 0.1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mu", [0.05, 0.5, 0.95])
def test_akl_head_split_is_the_sort_free_definition_for_every_dtype_ties_included(dtype, mu):
    _, teacher = make_logits((16, 4), "wide", seed=74, dtype=dtype)
    teacher = teacher[..., :VOCAB].reshape(-1, VOCAB)
    teacher[0, :40] = teacher[0, 0]  # a large tie, so a boundary may fall inside it
    teacher[1] = teacher[1].round()  # many ties
    prefix, shift = head_threshold(teacher, mu, group=None)
    ours = (order_keys(teacher) >> shift) >= prefix.unsqueeze(-1)
    torch.testing.assert_close(ours, akl_head_mask(teacher, VOCAB, mu), rtol=0, atol=0)
    assert ours.any(-1).all() and not ours.all()  # a head and a tail in every row (not all ties)


def test_akl_head_keys_order_like_the_logits_negative_zero_and_extremes_included():
    values = torch.tensor([-3.4e38, -1.0, -1e-30, -0.0, 0.0, 1e-30, 1.0, 3.4e38])
    keys = order_keys(values)
    assert keys[3] == keys[4]  # -0.0 == +0.0
    assert torch.all(keys[1:4] > keys[:3]) and torch.all(keys[5:] > keys[4:-1])
    assert keys.min() >= 0 and keys.max() < 2**32


def test_akl_gradient_flows_through_the_gap_weights_as_in_the_official_code():
    student, teacher = make_logits((SEQ, BATCH), "wide", seed=75)
    _, grad = _run(vocab_parallel_akl_loss, student, teacher, torch.ones(SEQ, BATCH))
    # the same loss with detached weights (the AKL authors' own code) has another gradient
    s = student.double()[..., :VOCAB].requires_grad_(True)
    p, q = torch.softmax(teacher.double()[..., :VOCAB], -1), torch.softmax(s, -1)
    head = akl_head_mask(teacher, VOCAB, 0.5)
    gap = (p - q.detach()).abs()
    w_head = (head * gap).sum(-1) / gap.sum(-1)
    ce, rkl = -(p * q.log()).sum(-1), (q * (q.log() - p.log())).sum(-1)
    (w_head * ce + (1 - w_head) * rkl).sum().backward()
    assert (grad[..., :VOCAB].double() - s.grad).abs().max() > 1e-3


def test_akl_when_student_equals_teacher_takes_equal_weights_instead_of_nan():
    student, _ = make_logits((SEQ, BATCH), "wide", seed=76)
    s = student.clone().requires_grad_(True)
    loss = vocab_parallel_akl_loss(s, student, vocab_size=VOCAB)
    loss.sum().backward()
    p = torch.softmax(student.double()[..., :VOCAB], -1)
    torch.testing.assert_close(loss.double(), -0.5 * (p * p.log()).sum(-1), rtol=1e-5, atol=1e-5)
    assert torch.isfinite(s.grad).all()


# ---- dkd ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("scale", ["unit", "wide", "extreme"])
def test_dkd_equals_the_official_formula_and_ignores_tokens_without_a_valid_label(scale, temperature):
    student, teacher = make_logits((SEQ, BATCH), scale, seed=77)
    labels, g = _labels(78), _upstream()
    loss, grad = _run(vocab_parallel_dkd_loss, student, teacher, g, labels=labels, alpha=1.0, beta=0.5,
                      temperature=temperature)  # fmt: skip
    ref_loss, ref_grad = dkd_reference(student, teacher, labels, VOCAB, 1.0, 0.5, temperature, g)
    torch.testing.assert_close(loss.double(), ref_loss, **FP32)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=2e-6)
    assert loss[2, 1] == 0 and loss[4, 2] == 0 and torch.all(grad[2, 1] == 0) and torch.all(grad[4, 2] == 0)
    assert torch.all(grad[..., VOCAB:] == 0)


def test_dkd_weights_are_bound_as_given_and_default_to_the_official_ones():
    student, teacher = make_logits((SEQ, BATCH), "wide", seed=79)
    labels = _labels(80)
    default = vocab_parallel_dkd_loss(student, teacher, labels, vocab_size=VOCAB).double()
    torch.testing.assert_close(default, dkd_reference(student, teacher, labels, VOCAB, 1.0, 0.5, 1.0)[0], **FP32)
    other = vocab_parallel_dkd_loss(student, teacher, labels, vocab_size=VOCAB, alpha=0.3, beta=8.0).double()
    torch.testing.assert_close(other, dkd_reference(student, teacher, labels, VOCAB, 0.3, 8.0, 1.0)[0], **FP32)


def test_dkd_stays_exact_when_the_label_dominates_beyond_fp32_range():
    """The target's logit 120 above every other: relative to the row maximum the other classes' mass underflows in
    fp32; the sums are taken relative to the non-target maximum instead."""
    student, teacher = make_logits((SEQ, BATCH), "unit", seed=81)
    labels = make_labels((SEQ, BATCH), seed=82)
    for x in (student, teacher):
        x.scatter_(-1, labels.unsqueeze(-1), 120.0)
    g = _upstream()
    loss, grad = _run(vocab_parallel_dkd_loss, student, teacher, g, labels=labels)
    ref_loss, ref_grad = dkd_reference(student, teacher, labels, VOCAB, grad_loss=g)
    torch.testing.assert_close(loss.double(), ref_loss, **FP32)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=2e-6)


# ---- ctkd ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 3.7, 15.6])
@pytest.mark.parametrize("scale", ["unit", "wide", "extreme"])
def test_ctkd_equals_tempered_kl_and_its_temperature_gradient(scale, temperature):
    student, teacher = make_logits((SEQ, BATCH), scale, seed=83)
    g = _upstream()
    tau = torch.tensor(temperature, requires_grad=True)
    loss, grad = _run(vocab_parallel_ctkd_loss, student, teacher, g, temperature=tau)
    ref_loss, ref_grad, ref_tau_grad = ctkd_reference(student, teacher, temperature, VOCAB, g)
    # a KL from fp32 log-partitions is good to ~1e-6 nats (the official fp32 formula's error too), then times tau^2
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-4 + 2e-6 * temperature**2)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=2e-6)
    # d loss / d tau sums per-token terms that cancel: compare against their magnitude, not the (small) total
    scale_of_terms = temperature * (g.abs() * ref_loss.abs()).sum().item() + 1e-2
    assert abs(tau.grad.item() - ref_tau_grad.item()) <= 2e-5 * scale_of_terms, (tau.grad, ref_tau_grad)
    assert torch.all(grad[..., VOCAB:] == 0)


def test_ctkd_trains_the_student_like_the_official_cross_entropy_and_reports_the_kl():
    """The official code returns tau^2 CE(p_tau, q_tau): tau^2 times the teacher's tempered entropy more, no
    gradient for the student."""
    student, teacher = make_logits((SEQ, BATCH), "wide", seed=84)
    tau = 4.0
    s = student.double()[..., :VOCAB].requires_grad_(True)
    p = torch.softmax(teacher.double()[..., :VOCAB] / tau, -1)
    official = tau**2 * -(p * torch.log_softmax(s / tau, -1)).sum(-1)
    official.sum().backward()
    loss, grad = _run(vocab_parallel_ctkd_loss, student, teacher, torch.ones(SEQ, BATCH), temperature=tau)
    torch.testing.assert_close(loss.double(), official.detach() - tau**2 * -(p * p.log()).sum(-1), rtol=1e-5, atol=2e-4)
    torch.testing.assert_close(grad[..., :VOCAB].double(), s.grad, rtol=1e-4, atol=2e-6)


def test_curriculum_temperature_reverses_its_gradient_with_a_cosine_rising_strength():
    module = CurriculumTemperature(min_temperature=1.0, max_temperature=21.0, lambda_max=0.8, ramp_fraction=0.25)
    strengths = []
    for step in (0, 50, 100, 400):
        module.set_progress(step, total_steps=400)
        strengths.append(module.strength)
    assert strengths == pytest.approx([0.0, 0.4, 0.8, 0.8])  # ramp over 100 of 400 steps; 0.4 at its middle
    module.set_progress(50, total_steps=400)
    tau = module()
    assert tau.item() == pytest.approx(1 + 20 * torch.sigmoid(torch.tensor(1.0)).item())  # theta starts at 1
    tau.backward()
    sigmoid = torch.sigmoid(torch.tensor(1.0)).item()
    assert module.theta.grad.item() == pytest.approx(-0.4 * 20 * sigmoid * (1 - sigmoid))  # reversed, times lambda
    no_ramp = CurriculumTemperature(min_temperature=1.0, max_temperature=2.0, lambda_max=1.0, ramp_fraction=0.0)
    no_ramp.set_progress(0, total_steps=10)
    assert no_ramp.strength == 1.0


def test_a_ctkd_step_moves_the_temperature_to_raise_the_loss():
    """Gradient reversal: the temperature ascends the distillation loss that the student descends."""
    student, teacher = make_logits((SEQ, BATCH), "wide", seed=85)
    objective = get_loss(TAIDConfig(loss="ctkd", ctkd_ramp_fraction=0.0))
    params = ObjectiveParameters(objective.trainable, OptimConfig(), torch.device("cpu"))
    labels = make_labels((SEQ, BATCH), seed=86)

    def loss() -> torch.Tensor:
        return objective(student, teacher, labels, t=0.4, vocab_size=VOCAB, group=None).total.sum()

    for _ in range(3):
        params.start_step(5, 10)
        before = loss()
        before.backward()
        assert params.reduce_gradients(holds_gradient=True, tokens=SEQ * BATCH, group=None)
        params.step(lr=0.05)
        with torch.no_grad():
            assert loss() > before.detach()


def test_objective_parameters_state_round_trips_through_json_exactly():
    objective = get_loss(TAIDConfig(loss="ctkd"))
    params = ObjectiveParameters(objective.trainable, OptimConfig(), torch.device("cpu"))
    for step in range(3):
        params.start_step(step, 100)
        (objective.trainable() * 3.0).backward()
        params.reduce_gradients(holds_gradient=True, tokens=7.0, group=None)
        params.step(lr=1e-2)
    state = json.loads(json.dumps(params.state_dict()))
    restored = ObjectiveParameters(get_loss(TAIDConfig(loss="ctkd")).trainable, OptimConfig(), torch.device("cpu"))
    restored.load_state_dict(state)
    assert restored.module.theta.item() == params.module.theta.item() != 1.0
    for twin in (params, restored):  # the next step is the same too: Adam's moments and step count came back
        twin.start_step(3, 100)
        (twin.module() * 3.0).backward()
        twin.reduce_gradients(holds_gradient=True, tokens=7.0, group=None)
        twin.step(lr=1e-2)
    assert restored.module.theta.item() == params.module.theta.item()


def test_objective_parameters_gradient_is_per_token_and_a_rank_without_the_loss_adds_nothing():
    params = ObjectiveParameters(get_loss(TAIDConfig(loss="ctkd")).trainable, OptimConfig(), torch.device("cpu"))
    params.start_step(50, 100)
    params.module().backward()
    want = params.module.theta.grad.item() / 4.0
    assert params.reduce_gradients(holds_gradient=True, tokens=4.0, group=None)
    assert params.module.theta.grad.item() == pytest.approx(want)
    params.module.theta.grad.fill_(float("nan"))
    assert params.reduce_gradients(holds_gradient=False, tokens=4.0, group=None)  # another stage or TP rank
    assert params.module.theta.grad.item() == 0.0
    params.module.theta.grad = torch.tensor(float("inf"))
    assert not params.reduce_gradients(holds_gradient=True, tokens=4.0, group=None)


# ---- shared contracts ---------------------------------------------------------------------------------------------

NEW = {
    "akl": {"mu": 0.5},
    "ctkd": {"temperature": 2.0},
    "dkd": {"labels": None},  # filled per test
}


def _call(name, student, teacher, labels, **kwargs):
    options = {k: (labels if k == "labels" else v) for k, v in NEW[name].items()}
    return LOSSES[name](student, teacher, t=0.4, vocab_size=VOCAB, group=None, **{**options, **kwargs})


@pytest.mark.parametrize("name", list(NEW))
def test_result_does_not_depend_on_chunk_size(name):
    student, teacher = make_logits((SEQ, BATCH), "wide", seed=87)
    labels, g = _labels(88), _upstream()
    results = []
    for chunk in (1, 8, 21, None):
        s = student.clone().requires_grad_(True)
        loss = _call(name, s, teacher, labels, chunk_tokens=chunk)
        (loss * g.float()).sum().backward()
        results.append((loss.detach(), s.grad))
    for loss, grad in results[1:]:
        torch.testing.assert_close(loss, results[0][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad, results[0][1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", list(NEW))
def test_bf16_logits_use_fp32_statistics_and_get_a_bf16_gradient(name):
    student, teacher = make_logits((SEQ, BATCH), "wide", seed=89, dtype=torch.bfloat16)
    labels, g = _labels(90), _upstream()
    s = student.clone().requires_grad_(True)
    loss = _call(name, s, teacher, labels, chunk_tokens=5)
    (loss * g.float()).sum().backward()
    if name == "akl":
        ref_loss, ref_grad = akl_reference(student, teacher, VOCAB, 0.5, g)
    elif name == "ctkd":
        ref_loss, ref_grad, _ = ctkd_reference(student, teacher, 2.0, VOCAB, g)
    else:
        ref_loss, ref_grad = dkd_reference(student, teacher, labels, VOCAB, grad_loss=g)
    assert loss.dtype == torch.float32 and s.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-4, atol=2e-4)
    torch.testing.assert_close(s.grad.double(), ref_grad, rtol=1e-2, atol=3e-3)


@pytest.mark.parametrize("name", list(NEW))
def test_no_grad_forward_works_for_validation(name):
    student, teacher = make_logits((SEQ, BATCH), "unit", seed=91)
    labels = _labels(92)
    with torch.no_grad():
        loss = _call(name, student.requires_grad_(True), teacher, labels)
    assert loss.grad_fn is None and torch.isfinite(loss).all()
    torch.testing.assert_close(loss, _call(name, student.detach(), teacher, labels))


class _NewTensors(TorchDispatchMode):
    """Records the element count of every tensor an op allocates (outputs that share no storage with an input)."""

    def __init__(self):
        super().__init__()
        self.sizes: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in torch.utils._pytree.tree_leaves((args, kwargs))
                  if isinstance(a, torch.Tensor)}  # fmt: skip
        for x in torch.utils._pytree.tree_leaves(out):
            if isinstance(x, torch.Tensor) and x.untyped_storage().data_ptr() not in inputs:
                self.sizes.append(x.numel())
        return out


@pytest.mark.parametrize("name, gradient_sized", [("akl", 3), ("ctkd", 1), ("dkd", 1)])
def test_temporaries_are_bounded_by_the_chunk_besides_the_gradient(name, gradient_sized):
    """Forward + backward over 64 tokens in chunks of 4: every buffer the loss allocates holds at most a few chunks'
    worth of logits, except the gradient itself (the checkpointed akl assembles it from the chunks' gradients, which
    makes up to three gradient-sized tensors, one after another)."""
    seq, batch, chunk = 16, 4, 4
    student, teacher = make_logits((seq, batch), "wide", seed=93)
    labels = make_labels((seq, batch), seed=94)
    s = student.clone().requires_grad_(True)
    with _NewTensors() as recorder:
        loss = _call(name, s, teacher, labels, chunk_tokens=chunk)
        loss.sum().backward()
    gradient = seq * batch * PADDED_VOCAB
    large = [n for n in recorder.sizes if n > 3 * chunk * PADDED_VOCAB]
    assert all(n in (gradient, seq * batch * VOCAB) for n in large), sorted(set(large))
    assert len(large) <= gradient_sized, large


@pytest.mark.parametrize("name", ["ctkd", "dkd"])
def test_fused_baselines_save_only_the_logits_and_per_token_statistics(name):
    student, teacher = make_logits((SEQ, BATCH), "unit", seed=95)
    s = student.clone().requires_grad_(True)
    loss = _call(name, s, teacher, _labels(96))
    saved = loss.grad_fn.next_functions[0][0].saved_tensors  # view -> the autograd Function
    big = [x for x in saved if x.numel() >= SEQ * BATCH * VOCAB]
    assert {x.data_ptr() for x in big} == {s.data_ptr(), teacher.data_ptr()}
    assert all(x.numel() <= SEQ * BATCH * 3 for x in saved if x.numel() < SEQ * BATCH * VOCAB)


@pytest.mark.parametrize(
    "name, options, match",
    [
        ("akl", {"mu": 1.0}, r"mu=1.0 must be in \(0, 1\)"),
        ("akl", {"mu": 0.0}, r"mu=0.0 must be in \(0, 1\)"),
        ("ctkd", {"temperature": 0.0}, "temperature=0.0 must be a finite number > 0"),
        ("ctkd", {"temperature": torch.ones(2)}, "one-element float tensor"),
        ("dkd", {"temperature": -1.0}, "temperature=-1.0 must be a finite number > 0"),
        ("dkd", {"beta": float("nan")}, "beta=nan must be a finite number >= 0"),
        ("dkd", {"labels": torch.zeros(3, dtype=torch.long)}, "dkd needs labels shaped like the logits"),
        ("dkd", {"labels": torch.zeros(SEQ, BATCH)}, "must be integer token ids"),
    ],
)
def test_invalid_arguments_raise_value_error_with_the_fix(name, options, match):
    student, teacher = make_logits((SEQ, BATCH), "unit", seed=97)
    labels = options.pop("labels", _labels(98))
    with pytest.raises(ValueError, match=match):
        _call(name, student, teacher, labels, **options)


def test_dkd_without_labels_and_ctkd_without_a_temperature_say_what_they_need():
    student, teacher = make_logits((SEQ, BATCH), "unit", seed=99)
    with pytest.raises(ValueError, match="dkd needs labels"):
        LOSSES["dkd"](student, teacher, t=0.4, vocab_size=VOCAB, group=None)
    with pytest.raises(TypeError, match="temperature"):
        LOSSES["ctkd"](student, teacher, t=0.4, vocab_size=VOCAB, group=None)


def test_get_loss_binds_the_config_keys():
    student, teacher = make_logits((SEQ, BATCH), "wide", seed=100)
    labels = _labels(101)
    cfg = TAIDConfig(loss="dkd", dkd_alpha=0.7, dkd_beta=2.0, dkd_temperature=3.0, chunk_tokens=4)
    terms = get_loss(cfg)(student, teacher, labels, t=0.4, vocab_size=VOCAB, group=None)
    want = vocab_parallel_dkd_loss(student, teacher, labels, alpha=0.7, beta=2.0, temperature=3.0, vocab_size=VOCAB)
    torch.testing.assert_close(terms.total, want)
    terms = get_loss(TAIDConfig(loss="akl", akl_mu=0.3))(student, teacher, labels, t=0.4, vocab_size=VOCAB, group=None)
    torch.testing.assert_close(terms.total, vocab_parallel_akl_loss(student, teacher, mu=0.3, vocab_size=VOCAB))
    objective = get_loss(TAIDConfig(loss="ctkd", ctkd_min_temperature=2.0, ctkd_max_temperature=4.0))
    tau = 2.0 + 2.0 * torch.sigmoid(torch.tensor(1.0)).item()
    torch.testing.assert_close(
        objective(student, teacher, labels, t=0.4, vocab_size=VOCAB, group=None).total,
        vocab_parallel_ctkd_loss(student, teacher, tau, vocab_size=VOCAB),
    )
    assert objective.options == {
        "ctkd_min_temperature": 2.0,
        "ctkd_max_temperature": 4.0,
        "ctkd_lambda_max": 1.0,
        "ctkd_ramp_fraction": 10 / 240,
    }
    assert get_loss(TAIDConfig(loss="dkd")).trainable is None


# ---- multi-rank (torchrun, gloo) ----------------------------------------------------------------------------------


@pytest.mark.multiprocess
@pytest.mark.parametrize("tp", [2, 4])
def test_tp_matches_unsharded_and_float64_with_uneven_vocab_and_an_all_padding_rank(tp):
    for r in run_torchrun(WORKER, tp, "baselines"):
        assert r["baselines"] == "ok"
        if tp == 4:
            assert r["all_padding_rank"] == "ok"


@pytest.mark.multiprocess
def test_tp_collectives_are_counted():
    results = run_torchrun(WORKER, 2, "count")
    chunks = 5  # 21 tokens in chunks of 5
    for r in results:
        assert r["dkd_collectives"] == {"forward": ["MAX (21, 2)", "SUM (21, 6)"], "backward": []}
        assert r["ctkd_collectives"] == {"forward": ["MAX (21, 2)", "SUM (21, 6)"], "backward": []}
        akl = {way: [_without_tokens(call) for call in calls] for way, calls in r["akl_collectives"].items()}
        split = ["MAX", "SUM 256", "SUM 256", "SUM 256", "SUM 256"]  # fp32 logits: 4 radix rounds
        assert akl["forward"] == (split + ["MAX 2", "SUM 2", "SUM 4"]) * chunks
        assert akl["backward"] == ["MAX 2", "SUM 2", "SUM 4", "SUM"] * chunks  # the recompute, then lse's gradient


def _without_tokens(call: str) -> str:
    """ "SUM (5, 256)" -> "SUM 256", "MAX (5,)" -> "MAX": akl's collectives per chunk, whatever its length."""
    op, shape = call.split(" ", 1)
    rest = shape.strip("()").split(",")[1:]
    return " ".join([op, *(x.strip() for x in rest if x.strip())])


# ---- the benchmark's rows -----------------------------------------------------------------------------------------


def test_bench_loss_times_the_baselines_against_fkl(tmp_path):
    """The code path of docs/losses.md's baseline benchmark (the timings at this size mean nothing)."""
    import subprocess
    import sys

    from tests.support import REPO_ROOT, subprocess_env

    out = tmp_path / "bench.json"
    variants = ["loss:fkl", "loss:akl", "loss:ctkd", "loss:dkd"]
    cmd = [sys.executable, "tools/bench_loss.py", "--tokens", "16", "--vocab", "300", "--device", "cpu"]
    cmd += ["--repeats", "1", "--warmup", "1", "--variants", ",".join(variants), "--baseline", "loss:fkl"]
    proc = subprocess.run(
        [*cmd, "--json", str(out)], capture_output=True, text=True, env=subprocess_env(), cwd=REPO_ROOT, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    results = {r["variant"]: r for r in data["results"]}
    assert list(results) == variants and data["info"]["baseline"] == "loss:fkl"
    assert results["loss:fkl"]["speedup_vs_baseline"] == 1.0
    assert all(r["loss"] > 0 and r["speedup_vs_baseline"] > 0 for r in results.values())
    assert not any("agrees" in r for r in results.values())  # other objectives: no agreement with TAID's formula
