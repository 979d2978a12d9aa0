"""Training and validation batches from megatron indexed datasets, through megatron-core's GPTDataset.

    train_iter, make_valid_iter = build_data_iterators(
        data_cfg, tokenizer, micro_batch_size=2, global_batch_size=16, dp_rank=r, dp_size=4,
        train_steps=1000, eval_iters=10, consumed_samples=step * 16)
    batch = next(train_iter)   # tokens/labels/position_ids [b, s] int64, loss_mask [b, s] float32,
                               # sample_index [b] int64

Samples. megatron-core's `BlendedMegatronDatasetBuilder` turns `data_cfg.blend` (one prefix, or weights and
prefixes) and `data_cfg.split` into a train and a valid dataset of exactly the sizes asked for (train:
train_steps * global_batch_size, valid: eval_iters * global_batch_size), shuffled once with `data_cfg.seed`.
Sample i is a window of seq_length + 1 tokens over EOD-separated documents; labels are the tokens shifted by one.

Order. Global batch g is samples [g * G, (g + 1) * G) of the train dataset (G = global_batch_size). It is cut into
dp_size contiguous parts; data-parallel rank r takes part r and walks it in micro-batches. Resuming from
`consumed_samples` (a multiple of G) therefore continues with exactly the samples a run without the restart
would have seen, provided blend, split, seq_length, seed, train_steps and global_batch_size are unchanged (they
define the shuffle). Validation always reads the same eval_iters global batches, from a fresh iterator per call.
The test split (the third share of data.split) is read only by `build_test_iterator`: one pass over it, for
held-out evaluation (`taidtron.evaluate`); training never touches it.

Index cache. GPTDataset caches its shuffle/sample indices as .npy files. They go under `data_cfg.cache_dir` (or
`<directory of the first dataset>/cache`), in a subdirectory keyed by the datasets' content, so rebuilding a
dataset under the same prefix can never reuse stale indices. With torch.distributed initialised, global rank 0
builds them and the others wait at a barrier and read them, so the cache must be on a filesystem every rank sees.
Between jobs sharing a cache (two runs on one dataset directory), rank 0 builds under an exclusive lock on
`<cache>/.lock`: megatron writes the .npy files in place, so a second job that found them half written would build
them again over the first job's reads; with the lock it waits and then finds them complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch

from taidtron import overrides
from taidtron.data.indexed import dataset_files
from taidtron.data.tokenizer import Tokenizer
from taidtron.data.validate import check_dataset, parse_blend, parse_split
from taidtron.distributed import world_of_one
from taidtron.lifetime import die_with_parent

logger = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
BATCH_KEYS = ("tokens", "labels", "loss_mask", "position_ids", "sample_index")


# ----------------------------------------------------------------------------------------------------------
# blend, split and cache


def dataset_content_key(prefixes: list[str]) -> str:
    """A digest of the datasets' content (.idx bytes and .bin size), independent of mtime and location."""
    h = hashlib.sha256()
    for prefix in prefixes:
        bin_path, idx_path, _ = dataset_files(prefix)
        h.update(f"{prefix}\0{bin_path.stat().st_size}\0{idx_path.stat().st_size}\0".encode())
        with open(idx_path, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()[:16]


def index_cache_dir(cache_dir: str | None, prefixes: list[str]) -> str:
    """Where megatron-core keeps this blend's sample indices: `<cache_dir or data dir/cache>/<content digest>`."""
    root = Path(cache_dir) if cache_dir else Path(prefixes[0]).parent / "cache"
    return str(root / dataset_content_key(prefixes))


# ----------------------------------------------------------------------------------------------------------
# datasets


def build_datasets(data_cfg: Any, tokenizer: Tokenizer, *, train_samples: int, valid_samples: int):
    """(train, valid) megatron datasets with at least these many samples; valid is None when it has no share
    or valid_samples is 0. Collective: with torch.distributed initialised every rank must call it."""
    if train_samples < 1:
        raise ValueError(f"train_samples={train_samples} must be >= 1.")
    want_valid = parse_split(data_cfg.split)[1] > 0 and valid_samples > 0
    # 0 rather than None for unused splits: megatron-core wants a size for every split of a weighted blend.
    train, valid, _ = _build_splits(data_cfg, tokenizer, [train_samples, valid_samples if want_valid else 0, 0])
    return train, (valid if want_valid else None)


def _build_splits(data_cfg: Any, tokenizer: Tokenizer, sizes: list[int | None]) -> list:
    """megatron's (train, valid, test) datasets of these sample counts (None: one pass over the split, unweighted
    blends only). Collective like `build_datasets`."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    prefixes, weights = parse_blend(data_cfg.blend)
    shares = parse_split(data_cfg.split)
    for prefix in prefixes:  # already done by the trainer before it built anything; cheap (sampled)
        check_dataset(prefix, tokenizer, shares)
    overrides.ensure_dataset_helpers()
    config = GPTDatasetConfig(
        random_seed=data_cfg.seed,
        sequence_length=data_cfg.seq_length,
        blend=(prefixes, weights),
        split=data_cfg.split,  # as given whatever eval_iters is: the train part must not depend on it
        path_to_cache=index_cache_dir(data_cfg.cache_dir, prefixes),
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,  # the EOD is a token the student must predict too
        create_attention_mask=False,  # causal attention builds its own mask; [s, s] per sample is waste
        mid_level_dataset_surplus=0.05,  # small datasets: give the weighted blend room to draw from
    )
    with world_of_one(), _index_cache_lock(config.path_to_cache):
        return BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, config).build()


@contextlib.contextmanager
def _index_cache_lock(cache: str) -> Iterator[None]:
    """Global rank 0 (the one rank that writes the index cache): hold `<cache>/.lock` while building; the other
    ranks read after megatron's barrier, once rank 0 is done, and take no lock (it would deadlock that barrier)."""
    if torch.distributed.get_rank() != 0:
        yield
        return
    Path(cache).mkdir(parents=True, exist_ok=True)
    with open(Path(cache) / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        yield


# ----------------------------------------------------------------------------------------------------------
# sampling and batching


class PretrainingBatchSampler:
    """Micro-batches of sample indices for one data-parallel rank (see the module docstring for the order).

    Yields lists of `micro_batch_size` indices, global batch after global batch, from `consumed_samples` (global
    count, a multiple of global_batch_size) up to the last full global batch below `total_samples`.
    """

    def __init__(
        self,
        *,
        total_samples: int,
        consumed_samples: int,
        micro_batch_size: int,
        global_batch_size: int,
        dp_rank: int,
        dp_size: int,
    ) -> None:
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank={dp_rank} must be in [0, dp_size={dp_size}).")
        if micro_batch_size < 1 or global_batch_size % (micro_batch_size * dp_size):
            raise ValueError(
                f"global_batch_size ({global_batch_size}) must be a multiple of micro_batch_size * "
                f"dp_size = {micro_batch_size} * {dp_size}."
            )
        if consumed_samples < 0 or consumed_samples % global_batch_size:
            raise ValueError(
                f"consumed_samples={consumed_samples} must be a non-negative multiple of "
                f"global_batch_size ({global_batch_size}): resume only at optimizer-step boundaries."
            )
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.global_batch_size = global_batch_size
        self.dp_rank = dp_rank
        self.per_rank = global_batch_size // dp_size

    def __iter__(self) -> Iterator[list[int]]:
        mbs = self.micro_batch_size
        for start in range(
            self.consumed_samples, self.total_samples - self.global_batch_size + 1, self.global_batch_size
        ):
            part = start + self.dp_rank * self.per_rank
            for offset in range(0, self.per_rank, mbs):
                yield list(range(part + offset, part + offset + mbs))

    def __len__(self) -> int:
        steps = max(0, (self.total_samples - self.consumed_samples) // self.global_batch_size)
        return steps * (self.per_rank // self.micro_batch_size)


class _NumberedSamples(torch.utils.data.Dataset):
    """A dataset whose samples also carry their number in it (`sample_index`): what a teacher cache is keyed by."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[index], "sample_index": torch.tensor(index, dtype=torch.int64)}


def collate(samples: list[dict]) -> Batch:
    """Stack GPTDataset samples into a micro-batch (dropping the blend's `dataset_id`)."""
    batch = {key: torch.stack([s[key] for s in samples]) for key in BATCH_KEYS}
    batch["loss_mask"] = batch["loss_mask"].float()
    return batch


def _worker_dies_with(parent_pid: int, _worker_id: int) -> None:
    die_with_parent(parent_pid)


def load_batches(dataset, sampler: Iterable[list[int]], num_workers: int = 0) -> Iterator[Batch]:
    """Micro-batches of `dataset` (megatron's GPTDataset), one per list of sample numbers `sampler` yields."""
    # Workers die with this process at once (torch's own watchdog would notice a dead parent only within seconds).
    loader = torch.utils.data.DataLoader(
        _NumberedSamples(dataset),
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        persistent_workers=False,
        worker_init_fn=partial(_worker_dies_with, os.getpid()),
    )
    return iter(loader)


def build_data_iterators(
    data_cfg: Any,
    tokenizer: Tokenizer,
    *,
    micro_batch_size: int,
    global_batch_size: int,
    dp_rank: int,
    dp_size: int,
    train_steps: int,
    eval_iters: int,
    consumed_samples: int = 0,
    num_workers: int = 0,
    dataset_samples: tuple[int, int] | None = None,
) -> tuple[Iterator[Batch], Callable[[], Iterator[Batch]] | None]:
    """(train iterator, factory of validation iterators) for this data-parallel rank.

    The train iterator yields this rank's micro-batches for optimizer steps consumed_samples / global_batch_size
    up to train_steps, global_batch_size / (micro_batch_size * dp_size) per step, then stops. Each call of the
    factory returns a fresh iterator over the same eval_iters global batches of the valid split (this rank's
    parts); the factory is None when data.split has no valid share or eval_iters is 0. Every batch is a dict of
    `tokens`, `labels`, `position_ids` ([b, s] int64), `loss_mask` ([b, s] float32) and `sample_index` ([b] int64,
    each sample's number in its split); attention is causal.

    `dataset_samples`: the (train, valid) sizes to build the datasets with, at least what the run reads (default:
    exactly that). megatron's shuffle depends on them, so a run that distils from a teacher cache passes the
    cache's and reads the samples the cache holds.

    Collective when torch.distributed is initialised: every rank of the default group must call it (all TP/PP
    ranks of a data-parallel replica pass the same dp_rank and read the same batches).
    `num_workers` > 0 loads batches in that many DataLoader worker processes.
    """
    if train_steps < 1:
        raise ValueError(f"train_steps={train_steps} must be >= 1.")
    train_samples = train_steps * global_batch_size
    if consumed_samples > train_samples:
        raise ValueError(
            f"consumed_samples={consumed_samples} is beyond the run's {train_samples} samples "
            f"(train_steps * global_batch_size); raise optim.train_steps to train further."
        )
    built_train, built_valid = dataset_samples or (train_samples, max(0, eval_iters) * global_batch_size)
    train_ds, valid_ds = build_datasets(data_cfg, tokenizer, train_samples=built_train, valid_samples=built_valid)
    common = dict(
        micro_batch_size=micro_batch_size, global_batch_size=global_batch_size, dp_rank=dp_rank, dp_size=dp_size
    )
    train_iter = load_batches(
        train_ds,
        PretrainingBatchSampler(total_samples=train_samples, consumed_samples=consumed_samples, **common),
        num_workers,
    )
    if valid_ds is None:
        return train_iter, None
    valid_samples = eval_iters * global_batch_size

    def make_valid_iter() -> Iterator[Batch]:
        return load_batches(
            valid_ds, PretrainingBatchSampler(total_samples=valid_samples, consumed_samples=0, **common), num_workers
        )

    return train_iter, make_valid_iter


def build_test_iterator(
    data_cfg: Any,
    tokenizer: Tokenizer,
    *,
    micro_batch_size: int,
    global_batch_size: int,
    dp_rank: int,
    dp_size: int,
    max_batches: int | None = None,
    num_workers: int = 0,
) -> tuple[Iterator[Batch], int]:
    """(iterator, number of global batches) over the test split, the third share of data.split, for held-out
    evaluation: this rank's micro-batches of every full global batch of one pass over the split (shuffled with
    data.seed), or of the first `max_batches` of them. A weighted blend needs `max_batches` (megatron-core sizes
    its blended splits explicitly). Collective like `build_data_iterators`; batches as there."""
    _, weights = parse_blend(data_cfg.blend)
    if parse_split(data_cfg.split)[2] <= 0:
        raise ValueError(
            f"data.split={data_cfg.split!r} has no test share; held-out evaluation reads the third "
            "share, e.g. data.split='90,5,5'."
        )
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches={max_batches} must be >= 1 (or None for the whole test split).")
    if weights is not None and max_batches is None:
        raise ValueError("a weighted data.blend needs a number of test batches; pass max_batches.")
    test_samples = None if max_batches is None else max_batches * global_batch_size
    # train: one sample (its index is cached and never read); valid: none.
    _, _, test_ds = _build_splits(data_cfg, tokenizer, [1, 0, test_samples])
    num_batches = len(test_ds) // global_batch_size
    if max_batches is not None:
        num_batches = min(num_batches, max_batches)
    if num_batches < 1:
        raise ValueError(
            f"the test split holds {len(test_ds)} samples of {data_cfg.seq_length} tokens, fewer than "
            f"one global batch ({global_batch_size}); give it a larger share in data.split."
        )
    sampler = PretrainingBatchSampler(
        total_samples=num_batches * global_batch_size,
        consumed_samples=0,
        micro_batch_size=micro_batch_size,
        global_batch_size=global_batch_size,
        dp_rank=dp_rank,
        dp_size=dp_size,
    )
    return load_batches(test_ds, sampler, num_workers), num_batches
