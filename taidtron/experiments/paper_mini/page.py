"""The results page (`paper_mini.md`) and its plots, written from the raw results alone: nothing on it is typed by
hand, and every reading sentence comes from reading.py."""

from __future__ import annotations

from pathlib import Path

from taidtron.experiments.paper_mini import analysis, reading
from taidtron.experiments.paper_mini.design import DISTILL_DATA_SEED_OFFSET, EVAL_DATA_SEED, START
from taidtron.experiments.paper_mini.figures import CAPTIONS, write_plots
from taidtron.experiments.paper_mini.jobs import is_transfer_cost
from taidtron.experiments.paper_mini.stats import CONFIDENCE, interval, t_quantile
from taidtron.io import atomic_write_text

ARCH_KEYS = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "ffn_hidden_size", "family")
DIGITS = {"student_lm_loss": 4, "kl_teacher_student": 4, "top1_agreement": 4, "student_entropy": 3}


def _teachers(raw: dict, variant: str) -> list[str]:
    design = raw["design"]
    return [t["name"] for t in design["teachers"]] if variant == "general" else [design["transfer"]["teacher"]]


def _arms(raw: dict, variant: str) -> list[str]:
    design = raw["design"]
    return list(design["arms"] if variant == "general" else design["transfer"]["arms"])


def _teacher_header(raw: dict, variant: str) -> str:
    params = {name: teacher["params"] for name, teacher in raw["teachers"].items()}
    suffix = "" if variant == "general" else ", fine-tuned on the target"
    return " | ".join(f"teacher {t} ({params[t] / 1e6:.2f} M{suffix})" for t in _teachers(raw, variant))


def metric_table(raw: dict, variant: str, metric: str) -> list[str]:
    """Rows: the pretrained start and every arm; columns: the teachers; cells: mean [95% interval]."""
    teachers = _teachers(raw, variant)
    lines = [f"| student | {_teacher_header(raw, variant)} |", "|---|" + "---|" * len(teachers)]
    for arm in (START, *_arms(raw, variant)):
        row = []
        for teacher in teachers:
            iv = analysis.cell(raw, variant, arm, teacher, metric)
            row.append("—" if iv is None else iv.text(DIGITS[metric]))
        label = "pretrained student (start)" if arm == START else raw["arms"][arm]["label"]
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    own = {"student_lm_loss": "teacher_lm_loss", "student_entropy": "teacher_entropy"}.get(metric)
    if own:
        row = []
        for teacher in teachers:
            found = analysis.teacher_values(raw, variant, teacher, own)
            row.append(interval(list(found.values())).text(DIGITS[metric]) if found else "—")
        lines.append("| *the teacher itself* | " + " | ".join(row) + " |")
    return lines


def contrast_table(raw: dict, variant: str) -> list[str]:
    contrasts = analysis.key_contrasts(raw, variant, _arms(raw, variant), _teachers(raw, variant))
    lines = [
        "| contrast | teacher | Δ held-out loss | Δ KL(teacher ‖ student) | Δ top-1 agreement |",
        "|---|---|---|---|---|",
    ]
    for c in contrasts:
        cells = []
        for metric in analysis.CONTRAST_METRICS:
            iv = c.by_metric.get(metric)
            text = "—" if iv is None else iv.signed(4)
            cells.append(f"**{text}**" if iv is not None and iv.resolved else text)
        lines.append(f"| {c.description} | {c.teacher or '—'} | " + " | ".join(cells) + " |")
    return lines


def teacher_table(raw: dict) -> list[str]:
    lines = ["| model | parameters | held-out next-token loss |", "|---|---|---|"]
    start = analysis.cell(raw, "general", START, _teachers(raw, "general")[0], "student_lm_loss")
    lines.append(f"| student, pretrained | {raw['student']['params']:,} | {'—' if start is None else start.text()} |")
    for name in _teachers(raw, "general"):
        found = analysis.teacher_values(raw, "general", name)
        text = interval(list(found.values())).text() if found else "—"
        lines.append(f"| teacher {name} | {raw['teachers'][name]['params']:,} | {text} |")
    return lines


def _variant_section(raw: dict, variant: str) -> list[str]:
    n = len(raw["design"]["seeds"])
    out = []
    for metric, what in (
        ("student_lm_loss", "held-out next-token loss of the student (nats per token; lower is better)"),
        ("kl_teacher_student", "held-out KL(teacher ‖ student) per token (nats)"),
        (
            "top1_agreement",
            "top-1 agreement with the teacher (fraction of held-out tokens where the student's most "
            "likely next token is the teacher's)",
        ),
        ("student_entropy", "mean entropy of the student's next-token distribution (nats), against the teacher's"),
    ):
        out += [f"The {what}; mean [95% interval] over {n} replicates:", "", *metric_table(raw, variant, metric), ""]
    out += [
        "Key contrasts, paired by replicate (first minus second; mean [95% interval]; **bold**: resolved, the "
        "interval excludes 0). In loss and KL < 0 favours the first, in agreement > 0 does:",
        "",
        *contrast_table(raw, variant),
        "",
        "Reading:",
        "",
        *[f"- {s}" for s in reading.variant_sentences(raw, variant, _arms(raw, variant), _teachers(raw, variant))],
        "",
    ]
    return out


def write_page(raw: dict, out: Path, raw_name: str = "paper_mini.json") -> Path:
    """`<out>/paper_mini.md` and its plots, from the raw results alone."""
    plots = write_plots(raw, out)
    design, data, timing, cfg = raw["design"], raw["data"], raw["timing"], raw["config"]
    lines = ["# TAID against the baselines at mini scale", ""]
    if timing.get("quick"):
        lines += [
            "> **Quick mode** (`--quick`): a pipeline check with a handful of steps. The numbers below mean nothing "
            "about the methods.",
            "",
        ]
    lines += [
        f"Generated by `tools/paper_mini.py` from `{raw_name}` (the raw per-run numbers and curves, beside this "
        f"page); nothing on this page is typed by hand. Reproduce with `{timing['command']}`.",
        "",
        "The question (TAID, Shing et al., ICLR 2025): distilling an already trained student, does TAID's "
        "interpolated target give a better student than the official code's baselines, and does its advantage grow "
        "with the teacher? Here a pretrained student of "
        f"{raw['student']['params'] / 1e6:.2f} M parameters learns from teachers of "
        + ", ".join(f"{t['params'] / 1e6:.2f} M" for t in raw["teachers"].values())
        + ", on the Python documentation, on a CPU; the paper's models are 0.4-72 B. What holds here need not hold "
        "at scale, and the reverse.",
        "",
        "## The models",
        "",
        *teacher_table(raw),
        "",
        *[f"- {s}" for s in reading.setup_sentences(raw)],
        "",
        "## Distillation on the general domain",
        "",
        *_variant_section(raw, "general"),
    ]
    if design.get("transfer"):
        transfer = design["transfer"]
        lines += [
            "## Domain transfer",
            "",
            f"The {transfer['teacher']} teacher of each replicate, fine-tuned for {transfer['finetune_steps']} steps "
            f"on the train pages of the manual's {', '.join(transfer['sections'])} sections (the target domain, "
            "which no other run reads), teaches the student pretrained on the general domain; every arm trains on "
            "the target's train pages with the settings of the general runs and is measured on the target's test "
            "pages.",
            "",
            *_variant_section(raw, "target"),
        ]
    lines += _limits(raw)
    lines += ["## Plots", ""]
    for name in plots:
        lines += [f"![{CAPTIONS[name]}]({name})", "", CAPTIONS[name], ""]
    lines += _setup(raw, data, cfg, design)
    lines += _run(raw, timing)
    page = out / "paper_mini.md"
    atomic_write_text(page, "\n".join(lines) + "\n")
    return page


def _limits(raw: dict) -> list[str]:
    n = len(raw["design"]["seeds"])
    quantile = t_quantile(n) if n > 1 else float("nan")
    return [
        "## What this can and cannot show",
        "",
        f"- Each interval rests on {n} replicates: a {CONFIDENCE:.0%} t-interval with {n - 1} degrees of freedom "
        f"is the mean ± {quantile:.2f} standard errors. Differences smaller than about that are not resolved here, "
        "whichever way they point; an unresolved difference is not evidence of no difference.",
        "- A replicate retrains the teachers, the student and the data order, so the intervals hold that "
        "variability; they do not hold that of other corpora, model families, sizes, tokenizers or learning rates. "
        "Every arm uses the same settings (no per-method tuning), as the official code does.",
        "- The models are 10^4-10^5 times smaller than the paper's and trained for minutes; the teachers' gap, "
        "not their absolute quality, is what the design controls. TAID's schedule is time-compressed (below): its "
        "adaptive rule acts over a run of hundreds of steps, not the paper's thousands, with the same ratio of "
        "adaptive step to floor.",
        "- Intervals are per comparison: with many contrasts on the page, some resolved one may be resolved by "
        "chance (at 95%, about one in twenty when there is no difference).",
        "",
    ]


def _setup(raw: dict, data: dict, cfg: dict, design: dict) -> list[str]:
    corpus, taid, optim = data["corpus"], cfg.get("taid") or {}, cfg.get("optim") or {}
    domains = data["domains"]
    parallel, data_cfg = cfg.get("parallel") or {}, cfg.get("data") or {}
    steps = optim.get("train_steps") or 0
    pre = raw["pretraining_optim"]

    def domain(name: str) -> str:
        d = domains[name]
        parts = d["parts"]
        return (
            f"{d['documents']} pages ({', '.join(d['sections'])}), data.split `{d['split']}`: train "
            f"{parts['train']['documents']} pages / {parts['train']['tokens']:,} tokens, valid "
            f"{parts['valid']['documents']} / {parts['valid']['tokens']:,}, test {parts['test']['documents']} / "
            f"{parts['test']['tokens']:,}"
        )

    model_rows = [
        f"| student | {raw['student']['params']:,} | "
        + " | ".join(str(raw["student"]["arch"].get(k)) for k in ARCH_KEYS)
        + " |"
    ]
    for name, teacher in raw["teachers"].items():
        model_rows.append(
            f"| teacher {name} | {teacher['params']:,} | "
            + " | ".join(str(teacher["arch"].get(k)) for k in ARCH_KEYS)
            + " |"
        )
    teacher_training = "; ".join(f"{t['name']}: {t['steps']} steps, peak lr {t['lr']:g}" for t in design["teachers"])
    tokens = data["tokens"]
    lines = [
        "## Setup",
        "",
        f"**Corpus.** The Python {corpus['version'].split('-')[0]} documentation, Debian package `{corpus['package']}` "
        f"{corpus['version']} (`apt-get download {corpus['package']}`; .deb SHA-256 `{corpus['deb_sha256']}`), "
        "converted by `taidtron/experiments/paper_mini/corpus.py`: the prose of each HTML page's main body, code "
        f"blocks dropped, one document per page, pages in SHA-256 order of their path. {corpus['documents']} pages, "
        f"{corpus['characters']:,} characters; text SHA-256 `{corpus['text_sha256']}`"
        f"{' (the reference build)' if corpus.get('matches_reference') else ''}. Licence: {corpus['licence']} The "
        "text is not committed; it is rebuilt from the package.",
        "",
        f"**Tokenizer and data.** sentencepiece BPE, {design['vocab_size']} pieces, trained on the whole corpus. "
        f"General domain: {domain('general')} ({tokens['general']:,} tokens in all). Target domain: "
        f"{domain('target')} ({tokens['target']:,} tokens). No model trains on valid or test pages; validation "
        f"curves read {(cfg.get('logging') or {}).get('eval_iters')} batches of the valid pages, the tables "
        f"{_test_batches(raw)} batches of {parallel.get('global_batch_size')} x {data_cfg.get('seq_length')} "
        f"tokens of the test pages, the same for every run (data seed {EVAL_DATA_SEED}).",
        "",
        "**Models** (megatron-core GPT; the student is llama-style with tied embeddings, the teachers qwen2-style):",
        "",
        "| model | parameters | layers | hidden | heads | kv groups | ffn | family |",
        "|---|---|---|---|---|---|---|---|",
        *model_rows,
        "",
        f"**Pretraining** (`taid.loss=lm`, the general domain's train pages, AdamW, warm-up a tenth of the steps, "
        f"cosine to a tenth of the peak; weight decay {pre['teacher']['weight_decay']:g}, clip "
        f"{pre['teacher']['clip_grad']:g}). Teachers: {teacher_training}. Student: {design['student_steps']} steps, "
        f"peak lr {design['student_lr']:g}. Replicate k pretrains every model with seed k (initialisation and "
        "data order).",
        "",
        f"**Distillation runs** (`{raw['config_file']}`, every key as run; a test compares this page's settings "
        f"with the file). Every arm starts from the replicate's pretrained student (`student.init`) and trains "
        f"{steps} steps of {parallel.get('global_batch_size')} x {data_cfg.get('seq_length')} tokens, AdamW lr "
        f"{optim.get('lr'):g} (warm-up {optim.get('warmup_steps')}, cosine to {optim.get('min_lr'):g}), betas "
        f"({optim.get('adam_beta1'):g}, {optim.get('adam_beta2'):g}), weight decay {optim.get('weight_decay'):g}, "
        f"clip {optim.get('clip_grad'):g}, {cfg.get('precision')}, data order of seed {DISTILL_DATA_SEED_OFFSET} + "
        f"k in replicate k (the same for every arm), validation every "
        f"{(cfg.get('logging') or {}).get('eval_interval')} steps. Pure distillation (lm_loss_weight "
        f"{taid.get('lm_loss_weight')}), as the paper; the no-teacher arm continues next-token training for the "
        "same steps.",
        "",
        f"**TAID's schedule, time-compressed.** t_start {taid.get('t_start')}, t_end {taid.get('t_end')}, beta "
        f"{taid.get('beta')} (the paper's), alpha {taid.get('alpha'):g}: alpha x steps = "
        f"{(taid.get('alpha') or 0) * steps:.2f}. The official instruction-tuning runs use alpha 5e-4 over about "
        "11-16 thousand steps (UltraChat, 5 epochs, batch 64), alpha x steps = 5.5-8; there the adaptive step "
        "alpha·sigmoid(m)·(1−t) is, at t_start, 2.7-4 times the linear floor's rise (t_end − t_start) / steps. "
        "With alpha 5e-4 a run of a few hundred steps would never leave the floor; scaling alpha to keep alpha x "
        "steps in that range keeps that ratio, so the adaptive rule acts as it does there. `TAID (linear t)` is the "
        "same run with `taid.adaptive=false`: t follows the floor, which isolates what the adaptive rule adds.",
        "",
        f"**Methods** (`taid.loss`): skew FKL / skew RKL with skew {taid.get('skew')}; FKL without options; "
        "definitions in docs/taid.md.",
        "",
        f"**Statistics.** {len(design['seeds'])} replicates (seeds {list(design['seeds'])}); per cell the mean and "
        "its 95% t-interval; contrasts paired by replicate (taidtron/experiments/paper_mini/stats.py).",
        "",
    ]
    return lines


def _run(raw: dict, timing: dict) -> list[str]:
    hardware = timing["hardware"]
    lines = [
        "## Run",
        "",
        f"Command: `{timing['command']}`. Hardware: {hardware['cpu']} ({hardware['cpu_capability']}), "
        f"{hardware['cores']} cores; Python {hardware['python']}, torch {hardware['torch']}, megatron-core "
        f"{hardware['megatron_core']}. {timing['workers']} worker processes, one thread each"
        + (
            f", code paths pinned ({', '.join(f'{k}={v}' for k, v in hardware['pinned'].items())})."
            if hardware.get("pinned")
            else "."
        ),
        "",
        f"Wall time {timing['wall_s'] / 60:.1f} min in all (data {timing['data_wall_s'] / 60:.1f} min, runs "
        f"{timing['runs_wall_s'] / 60:.1f} min); the runs took {timing['cpu_s'] / 60:.1f} CPU-minutes. Load average "
        f"{timing['load_start']} at the start, {timing['load_end']} at the end: on a shared machine the wall time "
        "is inflated and the CPU time is the better measure of the cost.",
        "",
        "Reproducibility: every run is single-threaded and seeded and does not depend on which worker runs it or "
        "after what, so a rerun on the same machine gives these numbers bit for bit whatever --jobs "
        "(tests/results/test_paper_mini.py checks it on the quick pipeline). On another x86 CPU the pinned code "
        "paths keep torch, MKL and oneDNN from choosing wider instructions; another build of torch or its math "
        "libraries may still round differently, and hundreds of training steps amplify a last-bit difference into "
        "visible ones. The intervals, which hold the variability of retrained teachers and students, are the scale "
        "to compare a rerun elsewhere with.",
        "",
        "| runs | count | CPU s per run | CPU ms per step | wall s per run |",
        "|---|---|---|---|---|",
    ]
    for kind, entry in timing["by_kind"].items():
        per_step = f"{1000 * entry['cpu_s'] / entry['steps']:.0f}" if entry["steps"] else "—"
        lines.append(
            f"| {kind} | {entry['runs']} | {entry['cpu_s'] / entry['runs']:.1f} | {per_step} | "
            f"{entry['wall_s'] / entry['runs']:.1f} |"
        )
    if timing.get("reused"):
        lines += [
            "",
            f"{timing['reused']} of the runs were reused from an earlier invocation with the same configuration: "
            "their CPU time is in the totals, their wall time is not.",
        ]
    workers = timing["workers"]
    transfer_cpu = sum(entry["cpu_s"] for kind, entry in timing["by_kind"].items() if is_transfer_cost(kind))
    lines += [
        "",
        f"From scratch, with no run reused, the experiment needs about {_minutes(timing['cpu_s'] / workers)} of "
        f"wall time on {workers} workers (its CPU time divided by the workers, as if they never wait), of which "
        f"the domain-transfer variant's fine-tuning and runs take {_minutes(transfer_cpu / workers)}.",
    ]
    if raw["failures"]:
        lines += [
            "",
            "**Failed runs** (missing from the tables): "
            + "; ".join(f"{name}: {error}" for name, error in sorted(raw["failures"].items()))
            + ".",
        ]
    return lines


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min"


def _test_batches(raw: dict) -> str:
    tokens = {c["test_tokens"] for c in raw["cells"] if c.get("test_tokens")}
    per_batch = (raw["config"].get("parallel") or {}).get("global_batch_size", 1) * (
        (raw["config"].get("data") or {}).get("seq_length", 1)
    )
    return " / ".join(str(t // per_batch) for t in sorted(tokens)) or "—"
