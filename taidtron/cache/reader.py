"""Reading a teacher cache in a training run: open it (every refusal before anything is built), then add each
micro-batch's records to the batch, read ahead in a background thread so the step never waits on the disk.

    cache = open_teacher_cache(cfg, ctx, tokenizer_ref, consumed_samples=..., needs_valid=...)   # CacheError
    batches = cache.attach(train_iter, "train", columns=...)   # the last pipeline stage only
    batch["teacher_log_probs"], batch["teacher_ids"], batch["teacher_tail"]   # [b, s, K], [b, s, K], [b, s]

Every sample's tokens are checked against the digest the writer stored for it, so a sample that is not the one the
cache was written for stops the run (never a silent wrong teacher).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from taidtron.cache.format import (
    CacheError,
    CacheManifest,
    ShardRecord,
    file_sha256,
    read_manifest,
    read_shard_record,
    sample_digests,
    shard_name,
    shard_tensor_shapes,
    unpack_ids,
)
from taidtron.cache.identity import WRITE_HINT, check_fits_run, run_samples
from taidtron.checkpoint.meta import TeacherSource, TokenizerRef

_END = object()


class TeacherCache:
    """A checked teacher cache (`open_teacher_cache`): what a run distils from instead of a teacher model."""

    def __init__(self, directory: Path, manifest: CacheManifest):
        self.directory = Path(directory)
        self.manifest = manifest

    @property
    def source(self) -> TeacherSource:
        """What checkpoints record as the run's teacher: a resume with another cache (or a teacher) is refused."""
        return TeacherSource(path=str(self.directory.resolve()), hash=self.manifest.fingerprint())

    @property
    def dataset_samples(self) -> tuple[int, int]:
        """(train, valid) sizes the writer built megatron's datasets with; the run builds its own with the same."""
        return self.manifest.samples["train"], self.manifest.samples.get("valid", 0)

    def describe(self) -> str:
        """One line for the start-up banner."""
        m = self.manifest
        model = m.teacher_model
        stored = (
            f"all {m.vocab_size:,} log-probs per token"
            if m.full_vocabulary
            else f"top-{m.top_k} log-probs of {m.vocab_size:,} + tail mass (spread uniformly) per token"
        )
        written = m.teacher.path if m.teacher is not None else "a randomly initialised teacher"
        return (
            f"from cache {self.directory} ({stored}, {m.log_prob_dtype}; {m.samples['train']:,} train samples) "
            f"of {written} ({model.family}, {model.num_layers} layers, hidden {model.hidden_size}); no teacher "
            f"model built or loaded"
        )

    def attach_run(self, train_iter, make_valid_iter, *, padded_vocab_size: int, vocab_size: int, ctx):
        """A run's iterators (`taidtron.data.build_data_iterators`) with each micro-batch's records added, on the
        last pipeline stage: this TP rank's columns, pinned for a GPU."""
        local = padded_vocab_size // ctx.tp
        first = ctx.tp_rank * local
        attach = partial(
            self.attach,
            columns=slice(first, max(first, min(first + local, vocab_size))),
            pin_memory=ctx.device.type == "cuda",
        )
        if make_valid_iter is None:
            return attach(train_iter, "train"), None
        return attach(train_iter, "train"), lambda: attach(make_valid_iter(), "valid")

    def attach(
        self, batches: Iterator[dict], split: str, *, columns: slice, pin_memory: bool = False, depth: int = 2
    ) -> Iterator[dict]:
        """`batches` with each micro-batch's records added, read `depth` micro-batches ahead in a thread.

        `columns`: this TP rank's valid vocabulary columns, global ids (a full-vocabulary cache reads only those;
        a top-K cache reads every entry, and the loss keeps its shard's). `pin_memory`: page-locked host tensors, so
        the copies to a GPU do not block."""
        return _Prefetcher(batches, open_shard_rows(self.directory, self.manifest, split, columns, pin_memory), depth)


def open_shard_rows(directory: Path, manifest: CacheManifest, split: str, columns: slice, pin_memory: bool = False):
    """A callable that returns a batch with its records added (see the module docstring), checking each sample's
    tokens against its stored digest. Reads from memory-mapped shards; one per thread."""
    return _ShardReader(Path(directory), manifest, split, columns, pin_memory)


class _ShardReader:
    """The records of one split's samples, from memory-mapped shards (one reader per prefetch thread)."""

    def __init__(self, directory: Path, manifest: CacheManifest, split: str, columns: slice, pin_memory: bool):
        self.directory, self.split, self.columns, self.pin = directory, split, columns, pin_memory
        self.manifest = manifest
        self._full = manifest.full_vocabulary
        self._tensors = ("log_probs", "sample_digest") if self._full else ("log_probs", "ids", "tail", "sample_digest")
        self._open: dict[int, object] = {}

    def _shard(self, index: int):
        if index not in self._open:
            from safetensors import safe_open

            if len(self._open) >= 4:  # a run walks the shards in order; keep a few maps open
                self._open.pop(next(iter(self._open)))
            path = self.directory / f"{shard_name(self.split, index)}.safetensors"
            self._open[index] = safe_open(str(path), framework="numpy")
        return self._open[index]

    def _rows(self, samples: np.ndarray) -> dict[str, np.ndarray]:
        """Records of these sample numbers, read as runs of consecutive rows per shard."""
        size = self.manifest.shard_samples
        parts: dict[str, list[np.ndarray]] = {}
        start = 0
        while start < len(samples):
            end = start + 1
            shard_index = samples[start] // size
            while end < len(samples) and samples[end] == samples[end - 1] + 1 and samples[end] // size == shard_index:
                end += 1
            shard = self._shard(int(samples[start]) // size)
            first = int(samples[start]) % size
            rows = slice(first, first + end - start)
            for name in self._tensors:
                # a full-vocabulary cache holds every column: this rank reads its own
                picked = (rows, slice(None), self.columns) if name == "log_probs" and self._full else rows
                parts.setdefault(name, []).append(shard.get_slice(name)[picked])
            start = end
        return {name: np.concatenate(values) for name, values in parts.items()}

    def __call__(self, batch: dict) -> dict:
        samples = batch["sample_index"].numpy()
        limit = self.manifest.samples.get(self.split, 0)
        if samples.min() < 0 or samples.max() >= limit:
            raise CacheError(
                f"{self.split} sample {int(samples.max())} is beyond the {limit:,} samples teacher cache "
                f"{self.directory} holds; {WRITE_HINT}."
            )
        rows = self._rows(samples)
        windows = torch.cat([batch["tokens"], batch["labels"][:, -1:]], dim=-1).numpy()
        wrong = np.flatnonzero((sample_digests(windows) != rows["sample_digest"]).any(axis=-1))
        if wrong.size:
            raise CacheError(
                f"{self.split} sample {int(samples[wrong[0]])} is not the sample teacher cache "
                f"{self.directory} holds for it (its tokens differ from the stored digest): the data changed "
                f"since the cache was written; write the cache again ({WRITE_HINT})."
            )
        records = batch_records(rows)
        if self.pin:
            records = {key: value.pin_memory() for key, value in records.items()}
        return {**batch, **records}


def batch_records(rows: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Shard rows (numpy, as stored) as the batch keys a loss reads (`teacher_logits_from_records`):
    teacher_log_probs [b, s, K] as stored, and for a top-K cache teacher_ids [b, s, K] int32 and teacher_tail."""
    out = {"teacher_log_probs": torch.from_numpy(rows["log_probs"])}
    if "ids" in rows:
        out["teacher_ids"] = torch.from_numpy(unpack_ids(rows["ids"]).astype(np.int32))
        out["teacher_tail"] = torch.from_numpy(rows["tail"])
    return out


class _Prefetcher:
    """An iterator over `fetch(batch)` for each batch of `source`, computed `depth` batches ahead in a daemon
    thread; an exception there is raised by the `next` that would have returned its batch."""

    def __init__(self, source: Iterator[dict], fetch, depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(source, fetch), name="taidtron-teacher-cache", daemon=True
        )
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, source, fetch) -> None:
        try:
            for batch in source:
                if not self._put(fetch(batch)):
                    return
            self._put(_END)
        except BaseException as exc:  # handed to the consumer, which raises it where it would have read the batch
            self._put(exc)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        item = self._queue.get()
        if item is _END:
            self._queue.put(_END)  # every later next() ends too
            raise StopIteration
        if isinstance(item, BaseException):
            self._queue.put(item)
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def open_teacher_cache(cfg, ctx, tokenizer: TokenizerRef, *, consumed_samples: int, needs_valid: bool) -> TeacherCache:
    """The cache `teacher.cache` names, checked before anything is built: the manifest against this run
    (`check_fits_run`), then every shard the run still reads (train samples from `consumed_samples`, and the valid
    samples when `needs_valid`): present, its record consistent with the manifest, its size and sha256 those
    recorded, its tensors the manifest's. The ranks share the shards to check between them. CacheError (one line,
    the first problem and how many more) on every rank when any rank found one."""
    directory = Path(cfg.teacher.cache)
    manifest = read_manifest(directory)
    check_fits_run(manifest, directory, cfg, tokenizer, needs_valid=needs_valid)
    wanted = run_samples(cfg)
    needed = [("train", index) for index in _shards_for(manifest, consumed_samples, wanted["train"])]
    if needs_valid:
        needed += [("valid", index) for index in _shards_for(manifest, 0, wanted["valid"])]
    mine = needed[ctx.rank :: ctx.world_size]
    problems = [problem for split, index in mine if (problem := _check_shard(directory, manifest, split, index))]
    if ctx.world_size > 1:
        everyone: list = [None] * ctx.world_size
        dist.all_gather_object(everyone, problems)
        problems = [problem for found in everyone for problem in found]
    if problems:
        more = f" ({len(problems) - 1} more shards have problems)" if len(problems) > 1 else ""
        raise CacheError(f"{problems[0]}{more}")
    return TeacherCache(directory, manifest)


def open_run_cache(cfg, ctx, tokenizer: TokenizerRef, *, consumed_samples: int) -> TeacherCache:
    """`open_teacher_cache` for a training run of `cfg` that has consumed `consumed_samples` (a resume): the valid
    split is checked when the run validates."""
    from taidtron.data.validate import parse_split

    needs_valid = cfg.logging.eval_iters > 0 and parse_split(cfg.data.split)[1] > 0
    return open_teacher_cache(cfg, ctx, tokenizer, consumed_samples=consumed_samples, needs_valid=needs_valid)


def _shards_for(manifest: CacheManifest, start: int, end: int) -> range:
    size = manifest.shard_samples
    return range(start // size, -(-end // size)) if end > start else range(0)


def _check_shard(directory: Path, manifest: CacheManifest, split: str, index: int) -> str | None:
    """What is wrong with one shard, or None."""
    name = shard_name(split, index)
    samples = manifest.shard_range(split, index)
    fix = (
        f"write it with `python -m taidtron.cache_teacher --config <config> --out {directory} --top-k "
        f"{manifest.top_k} --split {split} --samples {samples.start}:{samples.stop}` (a resumed write redoes it)"
    )
    try:
        record = read_shard_record(directory, split, index)
    except CacheError as exc:
        return f"{exc} ({name}: {fix})"
    path = directory / f"{name}.safetensors"
    if record is None or not path.is_file():
        held = f"{split} samples {samples.start}-{samples.stop - 1}"
        return f"teacher cache {directory} is missing shard {name} ({held}); {fix}."
    if _expected(record) != (split, index, samples.start, len(samples), path.name):
        return f"{directory / (name + '.json')} does not describe {name} as the manifest lays it out; {fix}."
    size = path.stat().st_size
    if size != record.bytes:
        state = "truncated" if size < record.bytes else "longer than written"
        return f"shard {path} is {state}: {size:,} bytes, {record.bytes:,} when it was written; {fix}."
    if file_sha256(path) != record.sha256:
        return f"shard {path} is corrupted: its sha256 differs from the one recorded when it was written; {fix}."
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            found = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except Exception as exc:  # a header safetensors cannot parse: anything from its own errors to OSError
        return f"shard {path} cannot be read as safetensors ({type(exc).__name__}: {exc}); {fix}."
    expected = {key: shape for key, (shape, _) in shard_tensor_shapes(manifest, len(samples)).items()}
    if found != expected:
        return f"shard {path} holds tensors {found}, the manifest needs {expected}; {fix}."
    return None


def _expected(record: ShardRecord) -> tuple:
    return record.split, record.index, record.first_sample, record.samples, record.file
