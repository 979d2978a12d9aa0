"""What the paper-mini experiment runs: the models beside the student, how long each is trained, the methods, the
seeds and the transfer variant, as one `Design` per mode (`FULL`, the results page; `QUICK`, the pipeline check).

Every distillation run shares the settings of `configs/paper_mini.yaml` (the student's architecture, the optimizer,
the run length, TAID's schedule, the data split, validation); a design adds only what differs between runs (a
method's `taid.*` keys, the teacher, the seed, the paths). Every value here and there is printed on the page, and
a test compares the committed page's settings with both.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Arm:
    """One way of training the student from the pretrained checkpoint."""

    label: str
    """Name on the page."""
    color: str
    """Its colour in every plot (one per arm)."""
    overrides: tuple[str, ...]
    """Config keys it sets on top of configs/paper_mini.yaml."""
    needs_teacher: bool = True
    """False for continued next-token training (no teacher built)."""


ARMS: dict[str, Arm] = {
    "taid": Arm("TAID (adaptive t)", "tab:red", ("taid.loss=taid", "taid.adaptive=true")),
    "taid_linear": Arm("TAID (linear t)", "tab:pink", ("taid.loss=taid", "taid.adaptive=false")),
    "fkl": Arm("FKL", "tab:blue", ("taid.loss=fkl",)),
    "skew_fkl": Arm("skew FKL", "tab:purple", ("taid.loss=skew_fkl",)),
    "skew_rkl": Arm("skew RKL", "tab:brown", ("taid.loss=skew_rkl",)),
    "rkl": Arm("RKL", "tab:orange", ("taid.loss=rkl",)),
    "tvd": Arm("TVD", "tab:green", ("taid.loss=tvd",)),
    "js": Arm("JS", "tab:cyan", ("taid.loss=js",)),
    "akl": Arm("AKL", "tab:olive", ("taid.loss=akl",)),
    "ctkd": Arm("CTKD", "tab:gray", ("taid.loss=ctkd",)),
    "dkd": Arm("DKD", "gold", ("taid.loss=dkd",)),
    "lm": Arm("no teacher (LM)", "black", ("taid.loss=lm",), needs_teacher=False),
}
"""Every arm the experiment can run, by key; a design picks its headline arms from these."""

START = "start"
"""Key of the pretrained student itself (no further training) in the raw results: the point every arm starts from."""


@dataclass(frozen=True)
class Teacher:
    """One teacher: its architecture (the config's teacher section takes these values) and its pretraining."""

    name: str
    """Key on the page (`small`, `large`)."""
    layers: int
    hidden: int
    heads: int
    groups: int
    """Key/value heads (GQA)."""
    ffn: int
    steps: int
    """Optimizer steps of its pretraining (`taid.loss=lm` on the general domain's train pages)."""
    lr: float
    """Peak learning rate of its pretraining (warm-up a tenth of the steps, cosine to a tenth of it)."""

    def overrides(self, role: str = "teacher") -> list[str]:
        return [
            f"{role}.num_layers={self.layers}",
            f"{role}.hidden_size={self.hidden}",
            f"{role}.num_attention_heads={self.heads}",
            f"{role}.num_query_groups={self.groups}",
            f"{role}.ffn_hidden_size={self.ffn}",
        ]


@dataclass(frozen=True)
class Transfer:
    """The domain-transfer variant: a teacher fine-tuned on the target domain (pages of some sections of the
    manual), the general student distilled on the target's train pages and measured on its test pages."""

    teacher: str
    """Which teacher (by name) is fine-tuned."""
    sections: tuple[str, ...]
    """Top-level sections of the manual that form the target domain."""
    split: str
    """data.split of the target pages (train, valid, test), by pages."""
    finetune_steps: int
    """Optimizer steps of the teacher's fine-tuning on the target's train pages (from its general checkpoint)."""
    finetune_lr: float
    """Peak learning rate of that fine-tuning (warm-up a tenth of the steps, cosine to a tenth of it)."""
    arms: tuple[str, ...]
    """Arms distilled on the target (keys of ARMS); the runs have the settings of configs/paper_mini.yaml."""
    test_batches: int | None = None
    """Global batches of the target's test split each student is measured on (None: one pass over all of it)."""


@dataclass(frozen=True)
class Design:
    """One mode of the experiment. Replicate k (each of `seeds`) trains its own teachers and its own pretrained
    student with seed k; its distillation runs read the data in the order of seed 1000 + k, the same for every arm, so
    arms are compared paired by replicate and the intervals hold the variability of teachers, student and data
    order alike."""

    teachers: tuple[Teacher, ...]
    """Smallest first."""
    arms: tuple[str, ...]
    """Headline arms (keys of ARMS), each distilled from every teacher (`lm` once: it has no teacher)."""
    seeds: tuple[int, ...]
    """Replicates."""
    student_steps: int
    """Optimizer steps of the student's pretraining (`taid.loss=lm`, the architecture of configs/paper_mini.yaml)."""
    student_lr: float
    """Peak learning rate of the student's pretraining (warm-up a tenth of the steps, cosine to a tenth of it)."""
    test_batches: int | None
    """Global batches of the general test split every student is measured on, the same tokens for all (None: one
    pass over all of it)."""
    vocab_size: int
    """Pieces of the sentencepiece BPE tokenizer trained on the corpus = the models' vocab_size."""
    max_pages: int | None
    """Pages of the manual in the corpus (None: all)."""
    transfer: Transfer | None
    """The domain-transfer variant (None: not run). Its target pages never enter the general domain's splits."""
    run_overrides: tuple[str, ...] = field(default=())
    """Changes to configs/paper_mini.yaml for every distillation run (QUICK only: shorter runs)."""
    pretraining_eval_iters: int = 4
    """Validation batches of the teachers' and the student's pretraining curves (every tenth of the run)."""

    def teacher(self, name: str) -> Teacher:
        return next(t for t in self.teachers if t.name == name)


TARGET_SECTIONS = ("tutorial", "howto", "faq")
DISTILL_DATA_SEED_OFFSET = 1000
"""Replicate k's distillation runs read the data in the order of seed 1000 + k (its pretraining read seed k's)."""
EVAL_DATA_SEED = 1234
"""Data seed of every test measurement, so every run is measured on the same batches."""

HEADLINE = ("taid", "taid_linear", "fkl", "skew_fkl", "skew_rkl", "akl", "lm")

FULL = Design(
    teachers=(
        # one layer: a teacher that cannot compose attention heads; four: one that can (the gap is in depth, width
        # and parameters; the student has one layer, narrower still). The small one trains 400 steps: after 1,000
        # its validation loss came within 0.24-0.27 nats of the large one's (the design wants >= 0.3).
        Teacher("small", layers=1, hidden=96, heads=4, groups=2, ffn=256, steps=400, lr=3e-3),
        Teacher("large", layers=4, hidden=256, heads=8, groups=4, ffn=704, steps=1000, lr=2e-3),
    ),
    arms=HEADLINE,
    seeds=(1, 2, 3),
    student_steps=600,
    student_lr=3e-3,
    test_batches=24,  # of the general test split's ~48: the same 49K tokens for every student
    vocab_size=2048,
    max_pages=None,
    transfer=Transfer(
        teacher="large",
        sections=TARGET_SECTIONS,
        split="80,10,10",
        finetune_steps=150,
        finetune_lr=1e-3,
        arms=HEADLINE,
    ),
)

QUICK = Design(
    teachers=(
        Teacher("small", layers=1, hidden=64, heads=4, groups=2, ffn=128, steps=16, lr=3e-3),
        Teacher("large", layers=2, hidden=96, heads=4, groups=2, ffn=192, steps=16, lr=3e-3),
    ),
    arms=("taid", "taid_linear", "fkl", "lm"),
    seeds=(1, 2),
    student_steps=12,
    student_lr=3e-3,
    test_batches=2,
    vocab_size=512,
    max_pages=80,
    transfer=Transfer(
        teacher="large",
        sections=TARGET_SECTIONS,
        split="50,25,25",
        finetune_steps=6,
        finetune_lr=1e-3,
        arms=("taid", "lm"),
    ),
    run_overrides=(
        "optim.train_steps=8",
        "optim.warmup_steps=2",
        "taid.alpha=0.75",  # alpha x train_steps as in configs/paper_mini.yaml
        "logging.eval_interval=4",
        "logging.eval_iters=2",
    ),
    pretraining_eval_iters=2,
)
