"""What a run is, as far as a teacher cache is concerned, and whether a cache fits it: the fingerprints the writer
records and a training run compares, each mismatch refused with one line that names it and the fix."""

from __future__ import annotations

from pathlib import Path

from taidtron.cache.format import CacheError, CacheManifest, DataRef
from taidtron.checkpoint.meta import TeacherSource, TokenizerRef
from taidtron.config import TrainConfig
from taidtron.losses.objective import FROM_LOG_PROBS

WRITE_HINT = "python -m taidtron.cache_teacher --config <this run's config> --out DIR --top-k K"


def data_ref(cfg: TrainConfig) -> DataRef:
    """The run's samples: blend contents and weights, split, seed and sequence length."""
    from taidtron.data import dataset_content_key
    from taidtron.data.validate import parse_blend, parse_split

    prefixes, weights = parse_blend(cfg.data.blend)
    return DataRef(
        prefixes=prefixes,
        contents=[dataset_content_key([prefix]) for prefix in prefixes],
        weights=weights,
        split=parse_split(cfg.data.split),
        seed=cfg.data.seed,
        seq_length=cfg.data.seq_length,
    )


def run_samples(cfg: TrainConfig) -> dict[str, int]:
    """Samples a run reads per split: train_steps global batches, and eval_iters of the valid split when it has a
    share (the sizes `taidtron.data.build_data_iterators` builds megatron's datasets with)."""
    from taidtron.data.validate import parse_split

    gbs = cfg.parallel.global_batch_size
    valid = cfg.logging.eval_iters * gbs if parse_split(cfg.data.split)[1] > 0 else 0
    return {"train": cfg.optim.train_steps * gbs, "valid": valid}


def teacher_source(init: str | None) -> TeacherSource | None:
    from taidtron.checkpoint import describe_source

    return describe_source(init) if init else None


def check_fits_run(
    manifest: CacheManifest, directory: Path, cfg: TrainConfig, tokenizer: TokenizerRef, *, needs_valid: bool
) -> None:
    """Refuse (CacheError, one line) a cache that was not written for this run: another objective than one that runs
    from log-probs, other data (contents, weights, split, seed, sequence length), another tokenizer or teacher,
    fewer train samples than the run reads, or no valid samples when the run validates."""
    where = f"teacher cache {directory}"
    loss = cfg.taid.loss
    if loss not in FROM_LOG_PROBS:
        if loss == "lm":
            raise CacheError(f"taid.loss=lm trains the student without a teacher; drop teacher.cache={directory}.")
        raise CacheError(
            f"taid.loss={loss} cannot run from a teacher cache (it needs the teacher's logits themselves, not only "
            f"log p_T); choose one of {', '.join(FROM_LOG_PROBS)}, or set teacher.cache=null and teacher.init."
        )
    cached, run = manifest.data, data_ref(cfg)
    rewrite = f"write a cache for this run ({WRITE_HINT})"
    if cached.contents != run.contents or cached.weights != run.weights:
        raise CacheError(
            f"{where} was written for other data: blend {_blend(cached)}, this run's data.blend is {_blend(run)} "
            f"(compared by content); set data.blend to the cache's, or {rewrite}."
        )
    for key, name in (("seq_length", "data.seq_length"), ("split", "data.split"), ("seed", "data.seed")):
        if getattr(cached, key) != getattr(run, key):
            raise CacheError(
                f"{where} was written with {name}={_shown(getattr(cached, key))}, this run has "
                f"{_shown(getattr(run, key))}: its samples would be other samples; set {name} back, or {rewrite}."
            )
    if manifest.tokenizer.fingerprint != tokenizer.fingerprint:
        raise CacheError(
            f"{where} was written with the tokenizer {manifest.tokenizer.path} (fingerprint "
            f"{manifest.tokenizer.fingerprint[:12]}), data.tokenizer is {tokenizer.path} (fingerprint "
            f"{tokenizer.fingerprint[:12]}); set data.tokenizer to the cache's, or {rewrite}."
        )
    if cfg.teacher.init:
        current = teacher_source(cfg.teacher.init)
        if manifest.teacher is None or manifest.teacher.hash != current.hash:
            written = (
                "a randomly initialised teacher"
                if manifest.teacher is None
                else f"the teacher {manifest.teacher.path} (hash {manifest.teacher.hash[:12]})"
            )
            raise CacheError(
                f"{where} was written from {written}, but teacher.init is {current.path} (hash "
                f"{current.hash[:12]}); set teacher.init=null to distil from the cache's teacher, or {rewrite}."
            )
    wanted = run_samples(cfg)
    if wanted["train"] > manifest.samples["train"]:
        raise CacheError(
            f"this run reads {wanted['train']:,} train samples (optim.train_steps={cfg.optim.train_steps} x "
            f"parallel.global_batch_size={cfg.parallel.global_batch_size}), {where} holds "
            f"{manifest.samples['train']:,}; lower optim.train_steps to at most "
            f"{manifest.samples['train'] // cfg.parallel.global_batch_size}, or {rewrite} with more train steps."
        )
    if needs_valid and wanted["valid"] > manifest.samples.get("valid", 0):
        raise CacheError(
            f"validation reads {wanted['valid']:,} valid samples (logging.eval_iters={cfg.logging.eval_iters} x "
            f"parallel.global_batch_size={cfg.parallel.global_batch_size}), {where} holds "
            f"{manifest.samples.get('valid', 0):,}; lower logging.eval_iters to at most "
            f"{manifest.samples.get('valid', 0) // cfg.parallel.global_batch_size}, or {rewrite} with more."
        )


def _blend(ref: DataRef) -> str:
    parts = [f"{prefix} ({content[:12]})" for prefix, content in zip(ref.prefixes, ref.contents)]
    if ref.weights is not None:
        parts = [f"{weight:g} x {part}" for weight, part in zip(ref.weights, parts)]
    return "[" + ", ".join(parts) + "]"


def _shown(value) -> str:
    if isinstance(value, list):  # normalised split shares
        return ",".join(f"{share:g}" for share in value)
    return str(value)
