"""Writing a teacher cache: the frozen teacher, forward only, over exactly the samples a training run with the same
config reads, its top-K log-probs (or all of them) stored per token in shards (format: `taidtron.cache.format`).

    write_cache(cfg, ctx, CacheOptions(out=DIR, top_k=32))

The samples come from megatron-core's GPTDataset, built as `taidtron.data.build_data_iterators` builds it (same blend,
split, seed, sequence length and dataset sizes), read by sample number. The teacher runs at the config's TP/PP
layout through megatron's pipeline schedule (forward only, no student, no gradient); its last stage takes the top K
across the TP shards without gathering the vocabulary (`taidtron.losses.vocab_parallel_top_k`), and TP rank 0 of
that stage writes. Data-parallel replicas take every dp-th shard of the work. A full-vocabulary cache gathers each
token's 16-bit log-probs to TP rank 0, which is what it writes anyway.

Resumable: a shard counts once its record is written (after the shard, both atomically), so a killed job, run again
with the same arguments, redoes only the shards it had not finished. Separate jobs can write disjoint shard-aligned
`samples` ranges (or `split`s) into one directory at the same time; the first to start writes the manifest, the
others check theirs equals it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from taidtron.cache.format import (
    LOG_PROB_DTYPES,
    SPLITS,
    CacheError,
    CacheManifest,
    ShardRecord,
    file_sha256,
    id_bytes_for,
    pack_ids,
    read_manifest,
    read_shard_record,
    sample_digests,
    shard_name,
    write_manifest,
    write_shard_record,
)
from taidtron.cache.identity import data_ref, run_samples, teacher_source
from taidtron.config import ROLES, ModelConfig
from taidtron.io import atomic_output

SHARD_TARGET_BYTES = 256 * 2**20
"""Default shard size: shard_samples is the most samples that fit (at least one micro-batch)."""
LOG_SECONDS = 30.0
"""In a batch log, a progress line at most this often within a shard (and one per shard written)."""


@dataclass(frozen=True)
class CacheOptions:
    out: str
    """The cache directory."""
    top_k: int | None
    """Entries per token; None: the full vocabulary."""
    log_prob_dtype: str = "float16"
    splits: tuple[str, ...] = SPLITS
    """Which splits this job writes."""
    samples: tuple[int, int] | None = None
    """Train samples [start, end) this job writes (shard-aligned); None: all."""
    shard_samples: int | None = None
    """Samples per shard; None: the existing manifest's, else about SHARD_TARGET_BYTES per shard."""


@dataclass
class _Progress:
    """What this rank wrote, for the log lines."""

    shards: int = 0
    tokens: int = 0
    bytes: int = 0
    seconds: float = 0.0
    forward_seconds: float = 0.0

    def forward(self, seconds: float) -> None:
        self.forward_seconds += seconds

    def shard(self, tokens: int, written: int) -> None:
        self.shards += 1
        self.tokens += tokens
        self.bytes += written

    def elapsed(self, seconds: float) -> None:
        self.seconds = seconds


def plan_manifest(cfg, tokenizer, options: CacheOptions) -> CacheManifest:
    """The manifest this job writes (or must find): K, dtype, shard size, sample counts and the fingerprints."""
    from taidtron.checkpoint import TokenizerRef

    vocab = tokenizer.vocab_size
    top_k = vocab if options.top_k is None else options.top_k
    if not 1 <= top_k <= vocab:
        raise CacheError(f"--top-k {top_k} must be between 1 and the vocabulary ({vocab:,}), or `full`.")
    if options.log_prob_dtype not in LOG_PROB_DTYPES:
        raise CacheError(f"--log-prob-dtype {options.log_prob_dtype} is not one of {', '.join(LOG_PROB_DTYPES)}.")
    full = top_k == vocab
    manifest = CacheManifest(
        top_k=top_k,
        vocab_size=vocab,
        id_bytes=0 if full else id_bytes_for(vocab),
        log_prob_dtype=options.log_prob_dtype,
        shard_samples=1,
        samples=run_samples(cfg),
        data=data_ref(cfg),
        tokenizer=TokenizerRef.of(cfg.data.tokenizer, tokenizer.fingerprint()),
        teacher=teacher_source(cfg.teacher.init),
        teacher_model=ModelConfig(**{name: getattr(cfg.teacher, name) for name in ModelConfig.RECORDED_FIELDS}),
        written_with={
            "layout": {"tp": cfg.parallel.tp, "pp": cfg.parallel.pp},
            "precision": cfg.precision,
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "command": " ".join(sys.argv),
        },
    )
    mbs = cfg.parallel.micro_batch_size
    if options.shard_samples is not None:
        shard = options.shard_samples
        if shard < 1 or shard % mbs:
            raise CacheError(
                f"--shard-samples {shard} must be a positive multiple of parallel.micro_batch_size ({mbs})."
            )
    else:
        per_sample = manifest.bytes_per_token() * cfg.data.seq_length
        shard = max(mbs, SHARD_TARGET_BYTES // per_sample // mbs * mbs)
    return dataclasses.replace(manifest, shard_samples=shard)


def _settle_manifest(directory: Path, planned: CacheManifest, shard_given: bool, ctx) -> CacheManifest:
    """Rank 0 writes the manifest, or checks the one a previous or concurrent job wrote; every rank gets it."""
    outcome: list = [None]
    if ctx.rank == 0:
        try:
            outcome[0] = _agree_with_existing(directory, planned, shard_given)
        except CacheError as exc:
            outcome[0] = exc
    if ctx.world_size > 1:
        dist.broadcast_object_list(outcome, src=0)
    if isinstance(outcome[0], CacheError):
        raise outcome[0]
    return outcome[0]


def _agree_with_existing(directory: Path, planned: CacheManifest, shard_given: bool) -> CacheManifest:
    if not (directory / "manifest.json").is_file():
        directory.mkdir(parents=True, exist_ok=True)
        write_manifest(directory, planned)
        return planned
    existing = read_manifest(directory)
    if not shard_given:  # a resumed job need not repeat --shard-samples
        planned = dataclasses.replace(planned, shard_samples=existing.shard_samples)
    mine, theirs = planned.identity(), existing.identity()
    differing = sorted(key for key in set(mine) | set(theirs) if mine.get(key) != theirs.get(key))
    if differing:
        shown = ", ".join(f"{key} {_short(theirs.get(key))} (this job: {_short(mine.get(key))})" for key in differing)
        raise CacheError(
            f"{directory} holds a teacher cache written with other settings: {shown}; write to another --out, "
            f"or remove {directory} to start over."
        )
    return existing


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _work(directory: Path, manifest: CacheManifest, options: CacheOptions) -> list[tuple[str, int]]:
    """The (split, shard) pairs this job must still write: those of its splits and sample range without a complete
    record."""
    size = manifest.shard_samples
    work = []
    for split in options.splits:
        total = manifest.samples.get(split, 0)
        start, end = (0, total) if options.samples is None or split != "train" else options.samples
        if split == "train" and options.samples is not None:
            if start % size or (end % size and end != total) or not 0 <= start < end <= total:
                raise CacheError(
                    f"--samples {start}:{end} must lie within the {total:,} train samples and start and end on "
                    f"shard boundaries (multiples of shard_samples={size}, or the end of the split), so that jobs "
                    f"never write the same shard."
                )
        for index in range(start // size, math.ceil(end / size)):
            if not _complete(directory, split, index):
                work.append((split, index))
    return work


def _complete(directory: Path, split: str, index: int) -> bool:
    try:
        record = read_shard_record(directory, split, index)
    except CacheError:
        return False  # a damaged record: write the shard again
    path = directory / record.file if record is not None else None
    return path is not None and path.is_file() and path.stat().st_size == record.bytes


class _TeacherRunner:
    """The teacher's pipeline stage on this rank and the forward-only schedule that runs it."""

    def __init__(self, cfg, ctx, manifest: CacheManifest):
        from megatron.core.pipeline_parallel import get_forward_backward_func

        from taidtron import checkpoint
        from taidtron.models import build_gpt
        from taidtron.trainer import params_dtype_for

        self.cfg, self.ctx, self.manifest = cfg, ctx, manifest
        self.padded_vocab_size = cfg.padded_vocab_size(ROLES)  # the online run's: the same logit shards
        self.model = build_gpt(
            cfg.teacher,
            cfg.parallel,
            padded_vocab_size=self.padded_vocab_size,
            max_seq_length=cfg.data.seq_length,
            pp_rank=ctx.pp_rank,
            params_dtype=params_dtype_for(cfg.precision, ctx.device),
            device=ctx.device,
        )
        if cfg.teacher.init:
            checkpoint.load_model_weights(self.model, cfg.teacher.init, group=ctx.dp_group)
        self.model.requires_grad_(False)
        self.model.eval()
        self.schedule = get_forward_backward_func()
        self.writes = ctx.is_last_stage and ctx.tp_rank == 0

    def _forward_step(self, data_iterator, model):
        batch = next(data_iterator)
        device = self.ctx.device
        logits = model(
            batch["tokens"].to(device, non_blocking=True), batch["position_ids"].to(device, non_blocking=True), None
        )
        if not self.ctx.is_last_stage:
            return logits, None
        return logits, partial(self._records, batch)

    def _records(self, batch: dict, logits: torch.Tensor, non_loss_data: bool = True) -> dict | None:
        """megatron's loss_func slot with collect_non_loss_data: one micro-batch's records (`shard_records`)."""
        windows = torch.cat([batch["tokens"], batch["labels"][:, -1:]], dim=-1)
        group = self.ctx.tp_group if self.ctx.tp > 1 else None
        return shard_records(logits, windows, self.manifest, group=group, keep=self.writes)

    @torch.no_grad()
    def run(self, batches, num_microbatches: int) -> list[dict | None]:
        return self.schedule(
            forward_step_func=self._forward_step,
            data_iterator=batches,
            model=[self.model],
            num_microbatches=num_microbatches,
            seq_length=self.cfg.data.seq_length,
            micro_batch_size=self.cfg.parallel.micro_batch_size,
            forward_only=True,
            collect_non_loss_data=True,
        )


def shard_records(
    logits: torch.Tensor, windows: torch.Tensor, manifest: CacheManifest, *, group=None, keep: bool = True
) -> dict[str, np.ndarray] | None:
    """What a shard stores for one micro-batch: from the teacher's vocab-parallel logits [b, s, V_local] and the
    samples' token windows [b, s + 1], the tensors of `taidtron.cache.format` as numpy arrays (log-probs rounded to
    the manifest's dtype). Collective over `group` (the TP group); `keep` False (the ranks that do not write)
    returns None."""
    from taidtron.losses import vocab_parallel_log_probs, vocab_parallel_top_k

    m = manifest
    b, s = windows.shape[0], windows.shape[1] - 1
    dtype = LOG_PROB_DTYPES[m.log_prob_dtype]
    lowest = float(np.finfo(dtype).min)  # a log-prob below float16's range is stored as its lowest finite value
    if m.full_vocabulary:
        local = vocab_parallel_log_probs(logits, vocab_size=m.vocab_size, group=group)  # [N, valid local]
        local = torch.nn.functional.pad(local, (0, logits.shape[-1] - local.shape[-1]))
        local = local.clamp_(min=lowest).to(torch.float16 if dtype == np.float16 else torch.float32)
        if group is not None:  # what TP rank 0 writes: every column, in id order (the bytes it writes anyway)
            parts = [torch.empty_like(local) for _ in range(torch.distributed.get_world_size(group))]
            dist.all_gather(parts, local.contiguous(), group=group)
            local = torch.cat(parts, dim=-1)
        if not keep:
            return None
        records = {"log_probs": local[:, : m.vocab_size].reshape(b, s, -1).cpu().numpy()}
    else:
        log_probs, ids, tail = vocab_parallel_top_k(logits, m.top_k, vocab_size=m.vocab_size, group=group)
        if not keep:
            return None
        records = {
            "log_probs": log_probs.clamp_(min=lowest).cpu().numpy().astype(dtype).reshape(b, s, -1),
            "ids": pack_ids(ids.cpu().numpy().reshape(b, s, -1), m.id_bytes),
            "tail": tail.cpu().numpy().reshape(b, s),
        }
    records["sample_digest"] = sample_digests(windows.cpu().numpy())
    return records


def write_cache(cfg, ctx, options: CacheOptions, stop=None) -> dict:
    """Write (or complete) the cache `options` describes for the run `cfg` describes. Collective: every rank of the
    world calls it. Returns this rank's totals (shards, tokens, bytes, seconds) and `stopped`: a stop signal
    (`stop`, a `taidtron.preemption.StopSignal`) ended the job after the shards in progress, the rest left for a
    resumed job."""
    from taidtron.checkpoint import TokenizerRef, check_tokenizer, read_meta
    from taidtron.data import build_datasets, load_batches, load_shared_tokenizer

    if cfg.teacher.cache:
        raise CacheError(
            f"teacher.cache={cfg.teacher.cache} is set: the cache is what this command writes (--out); set "
            f"teacher.cache=null and teacher.init to the teacher to cache."
        )
    directory = Path(options.out)
    tokenizer = load_shared_tokenizer(cfg.data)
    if cfg.teacher.init:
        ref = TokenizerRef.of(cfg.data.tokenizer, tokenizer.fingerprint())
        check_tokenizer(read_meta(cfg.teacher.init), f"teacher.init {cfg.teacher.init}", ref)
    planned = plan_manifest(cfg, tokenizer, options)
    manifest = _settle_manifest(directory, planned, options.shard_samples is not None, ctx)
    work = _work(directory, manifest, options) if ctx.rank == 0 else None
    shared = [work]
    if ctx.world_size > 1:
        dist.broadcast_object_list(shared, src=0)  # one view of the directory: every rank runs the same shards
    work = shared[0]
    runner = _TeacherRunner(cfg, ctx, manifest)
    train, valid = build_datasets(
        cfg.data, tokenizer, train_samples=manifest.samples["train"], valid_samples=manifest.samples["valid"]
    )
    datasets = {"train": train, "valid": valid}
    mine = work[ctx.dp_rank :: ctx.dp]
    progress = _Progress()
    report = runner.writes and ctx.dp_rank == 0
    mbs = cfg.parallel.micro_batch_size
    per_call = max(1, cfg.parallel.global_batch_size // (mbs * ctx.dp))  # micro-batches per schedule call
    if report:
        print(
            f"teacher cache {directory}: K={'all' if manifest.full_vocabulary else manifest.top_k} of "
            f"{manifest.vocab_size:,}, {manifest.log_prob_dtype}, {manifest.bytes_per_token():,} bytes per token; "
            f"{len(work)} shards to write ({len(mine)} on this data-parallel rank, {ctx.dp} ranks)",
            flush=True,
        )
    bar = _progress_bar(sum(len(manifest.shard_range(*item)) for item in mine) * cfg.data.seq_length, report)
    start = time.perf_counter()
    stopped = False
    for round_ in range(math.ceil(len(work) / ctx.dp)):  # every rank takes part in each round's stop check
        if round_ >= len(mine):
            stopped = bool(stop is not None and stop.agreed(ctx))
            if stopped:
                break
            continue
        split, index = mine[round_]
        samples = manifest.shard_range(split, index)
        records: list[dict] = []
        began = last_line = time.perf_counter()
        for first in range(samples.start, samples.stop, per_call * mbs):
            end = min(first + per_call * mbs, samples.stop)
            micro = [list(range(a, min(a + mbs, end))) for a in range(first, end, mbs)]
            batches = load_batches(datasets[split], micro)
            tick = time.perf_counter()
            records += [r for r in runner.run(batches, len(micro)) if r is not None]
            progress.forward(time.perf_counter() - tick)
            if bar is not None:
                bar.update((end - first) * cfg.data.seq_length)
            elif report and time.perf_counter() - last_line >= LOG_SECONDS:  # a batch log hears from a long shard
                last_line = time.perf_counter()
                done = (end - samples.start) * cfg.data.seq_length
                print(
                    f"writing {shard_name(split, index)}: {end - samples.start:,}/{len(samples):,} samples, "
                    f"{done / (last_line - began):,.0f} tokens/s",
                    flush=True,
                )
        if runner.writes:
            layout = f"tp {ctx.tp} pp {ctx.pp} dp {ctx.dp}"
            who = f"{socket.gethostname()} pid {os.getpid()} rank {ctx.rank} ({layout})"
            written = write_shard(directory, manifest, split, index, records, written_by=who)
            progress.shard(len(samples) * cfg.data.seq_length, written)
        progress.elapsed(time.perf_counter() - start)
        if bar is not None:
            bar.set_postfix(shards=f"{progress.shards}/{len(mine)}", MiB=f"{progress.bytes / 2**20:,.1f}")
        elif report:
            _log_shard(split, index, samples, time.perf_counter() - began, progress, len(mine))
        stopped = bool(stop is not None and stop.agreed(ctx))
        if stopped:
            break
    if bar is not None:
        bar.close()
    if ctx.world_size > 1:
        dist.barrier()
    if report:
        _log_summary(directory, manifest, progress, stopped)
    return {**dataclasses.asdict(progress), "stopped": stopped}


def _progress_bar(total_tokens: int, report: bool):
    """A tqdm bar of tokens for a person at a terminal; None in a batch log (a line per shard instead)."""
    from taidtron.metrics import interactive_console

    if not (report and interactive_console()):
        return None
    from tqdm import tqdm

    return tqdm(total=total_tokens, desc="cache", unit="tok", unit_scale=True, dynamic_ncols=True, file=sys.stdout)


def write_shard(
    directory: Path, manifest: CacheManifest, split: str, index: int, records: list[dict], *, written_by: str
) -> int:
    """Shard `index` of `split` from its records (dicts of numpy arrays with the shard's tensors, in sample order,
    e.g. one per micro-batch): the shard file, then its record, each atomically. Returns the shard's bytes."""
    from safetensors.numpy import save

    name = shard_name(split, index)
    samples = manifest.shard_range(split, index)
    tensors = {key: np.ascontiguousarray(np.concatenate([r[key] for r in records])) for key in records[0]}
    if tensors["sample_digest"].shape[0] != len(samples):
        raise RuntimeError(f"{name}: {tensors['sample_digest'].shape[0]} records for {len(samples)} samples")
    metadata = {"format": manifest.format}  # one key: safetensors orders several at random; equal shards, equal bytes
    path = directory / f"{name}.safetensors"
    with atomic_output(path, "wb") as f:
        f.write(save(tensors, metadata=metadata))
    record = ShardRecord(
        split=split,
        index=index,
        first_sample=samples.start,
        samples=len(samples),
        file=path.name,
        bytes=path.stat().st_size,
        sha256=file_sha256(path),
        written_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        written_by=written_by,
    )
    write_shard_record(directory, record)
    return record.bytes


def _log_shard(split: str, index: int, samples: range, seconds: float, progress: _Progress, total: int) -> None:
    rate = progress.tokens / max(progress.seconds, 1e-9)
    print(
        f"wrote {shard_name(split, index)} ({split} samples {samples.start}-{samples.stop - 1}) in {seconds:.1f} s; "
        f"{progress.shards}/{total} shards, {progress.tokens:,} tokens, {progress.bytes / 2**20:,.1f} MiB, "
        f"{rate:,.0f} tokens/s ({progress.bytes / max(progress.seconds, 1e-9) / 2**20:,.1f} MiB/s)",
        flush=True,
    )


def _log_summary(directory: Path, manifest: CacheManifest, progress: _Progress, stopped: bool) -> None:
    missing = {
        split: sum(not _complete(directory, split, i) for i in range(manifest.shards(split))) for split in SPLITS
    }
    state = (
        "complete"
        if not any(missing.values())
        else "incomplete: " + ", ".join(f"{n} {split} shards missing" for split, n in missing.items() if n)
    )
    print(
        f"{'stopped by a signal' if stopped else 'done'}: {progress.shards} shards, {progress.tokens:,} tokens, "
        f"{progress.bytes / 2**20:,.1f} MiB in "
        f"{progress.seconds:.1f} s on data-parallel rank 0 ({progress.tokens / max(progress.seconds, 1e-9):,.0f} "
        f"tokens/s); cache {directory} is {state}",
        flush=True,
    )
