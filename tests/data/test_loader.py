"""Batches from megatron-core's GPTDataset: shapes, shift, resume, data-parallel split, blends, validation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from taidtron.config import DataConfig
from taidtron.data.indexed import build_indexed_dataset
from taidtron.data.loader import PretrainingBatchSampler, build_data_iterators, build_datasets, index_cache_dir
from tests.support import run_torchrun

SEQ = 32


def data_cfg(blend, tmp_path, **kw) -> DataConfig:
    return DataConfig(blend=list(blend), seq_length=SEQ, cache_dir=str(tmp_path / "cache"), **kw)


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def iterators(cfg, tok, *, mbs=2, gbs=8, dp_rank=0, dp_size=1, steps=6, eval_iters=2, consumed=0):
    return build_data_iterators(
        cfg,
        tok,
        micro_batch_size=mbs,
        global_batch_size=gbs,
        dp_rank=dp_rank,
        dp_size=dp_size,
        train_steps=steps,
        eval_iters=eval_iters,
        consumed_samples=consumed,
    )


def test_batches_have_the_right_shapes_dtypes_and_labels_are_tokens_shifted_by_one(tmp_path, smoke_prefix, smoke_tok):
    train, _ = iterators(data_cfg([smoke_prefix], tmp_path), smoke_tok, mbs=3, gbs=12, steps=2)
    batches = list(train)
    assert len(batches) == 2 * 12 // 3
    for number, batch in enumerate(batches):
        assert set(batch) == {"tokens", "labels", "loss_mask", "position_ids", "sample_index"}
        assert torch.equal(batch["sample_index"], torch.arange(3 * number, 3 * number + 3))  # dp 1: in order
        for key, dtype in (
            ("tokens", torch.int64),
            ("labels", torch.int64),
            ("position_ids", torch.int64),
            ("loss_mask", torch.float32),
        ):
            assert batch[key].shape == (3, SEQ) and batch[key].dtype == dtype
        assert torch.equal(batch["tokens"][:, 1:], batch["labels"][:, :-1])
        assert torch.equal(batch["position_ids"], torch.arange(SEQ).expand(3, SEQ))
        assert torch.all(batch["loss_mask"] == 1.0)  # EOD is predicted too; nothing is padded in training
        assert int(batch["tokens"].max()) < smoke_tok.vocab_size


def test_samples_are_windows_over_whole_eod_terminated_documents(tmp_path, smoke_prefix, smoke_tok):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(smoke_prefix)
    docs = [tuple(ds[i].tolist()) for i in range(len(ds))]
    whole = set(docs)
    train, _ = iterators(data_cfg([smoke_prefix], tmp_path), smoke_tok, steps=2)
    for batch in train:
        for tokens, labels in zip(batch["tokens"].tolist(), batch["labels"].tolist()):
            window = tokens + labels[-1:]  # seq_length + 1 consecutive tokens of the shuffled document stream
            ends = [i for i, t in enumerate(window) if t == smoke_tok.eod]
            for a, b in zip(ends, ends[1:]):  # every segment between two EODs is a whole document
                assert tuple(window[a + 1 : b + 1]) in whole
            if ends:
                head, tail = tuple(window[: ends[0] + 1]), tuple(window[ends[-1] + 1 :])
                assert any(d[-len(head) :] == head for d in docs)
                assert not tail or any(d[: len(tail)] == tail for d in docs)


def test_resuming_from_consumed_samples_yields_exactly_the_next_batches(tmp_path, smoke_prefix, smoke_tok):
    cfg = data_cfg([smoke_prefix], tmp_path)
    straight, _ = iterators(cfg, smoke_tok, dp_rank=1, dp_size=2, steps=6)
    all_batches = list(straight)  # 6 steps * 8 / (2 * 2) = 12 micro-batches on this rank
    assert len(all_batches) == 12
    resumed, _ = iterators(cfg, smoke_tok, dp_rank=1, dp_size=2, steps=6, consumed=4 * 8)
    rest = list(resumed)
    assert len(rest) == 4
    for a, b in zip(all_batches[8:], rest):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_sample_numbers_follow_the_sampler_and_the_dataset_sizes_fix_the_samples(tmp_path, smoke_prefix, smoke_tok):
    """A teacher cache is keyed by sample number, and fixes the sizes megatron builds the datasets with (its shuffle
    depends on them): a run with `dataset_samples` reads the samples of a run of that length."""
    cfg = data_cfg([smoke_prefix], tmp_path)
    resumed, _ = iterators(cfg, smoke_tok, dp_rank=1, dp_size=2, steps=3, consumed=8)
    numbers = [batch["sample_index"].tolist() for batch in resumed]
    assert numbers == [[12, 13], [14, 15], [20, 21], [22, 23]]  # rank 1's halves of global batches 1 and 2
    long_run, _ = iterators(cfg, smoke_tok, steps=1000)  # 8,000 samples: more than one epoch of the corpus
    short_run, _ = iterators(cfg, smoke_tok, steps=2)
    short_as_long = build_data_iterators(
        cfg,
        smoke_tok,
        micro_batch_size=2,
        global_batch_size=8,
        dp_rank=0,
        dp_size=1,
        train_steps=2,
        eval_iters=2,
        dataset_samples=(1000 * 8, 2 * 8),
    )[0]
    long_batches, short_batches, sized = (take(it, 8) for it in (long_run, short_run, short_as_long))
    assert all(torch.equal(a["tokens"], b["tokens"]) for a, b in zip(long_batches, sized))
    assert not all(torch.equal(a["tokens"], b["tokens"]) for a, b in zip(long_batches, short_batches))


def test_dp_ranks_get_disjoint_parts_that_together_are_the_global_batch(tmp_path, smoke_prefix, smoke_tok):
    cfg = data_cfg([smoke_prefix], tmp_path)
    steps, gbs, mbs = 3, 8, 2
    single = list(iterators(cfg, smoke_tok, mbs=mbs, gbs=gbs, steps=steps)[0])
    ranks = [list(iterators(cfg, smoke_tok, mbs=mbs, gbs=gbs, dp_rank=r, dp_size=2, steps=steps)[0]) for r in range(2)]
    per_step_single, per_step_rank = gbs // mbs, gbs // mbs // 2
    for step in range(steps):
        glob = torch.cat([b["tokens"] for b in single[step * per_step_single : (step + 1) * per_step_single]])
        parts = [
            torch.cat([b["tokens"] for b in ranks[r][step * per_step_rank : (step + 1) * per_step_rank]])
            for r in range(2)
        ]
        assert torch.equal(torch.cat(parts), glob)  # rank r holds the r-th contiguous half of the global batch
        assert not any(torch.equal(x, y) for x in parts[0] for y in parts[1])


def test_validation_iterator_is_fresh_and_repeatable_each_call(tmp_path, smoke_prefix, smoke_tok):
    train, make_valid = iterators(data_cfg([smoke_prefix], tmp_path), smoke_tok, eval_iters=3)
    first, second = list(make_valid()), list(make_valid())
    assert len(first) == 3 * 8 // 2
    assert all(torch.equal(a["tokens"], b["tokens"]) for a, b in zip(first, second))
    train_tokens = torch.cat([b["tokens"] for b in train])
    assert not any(torch.equal(v, t) for b in first for v in b["tokens"] for t in train_tokens)


def test_no_validation_when_split_has_no_valid_share_or_eval_iters_is_zero(tmp_path, smoke_prefix, smoke_tok):
    assert iterators(data_cfg([smoke_prefix], tmp_path, split="100,0,0"), smoke_tok)[1] is None
    assert iterators(data_cfg([smoke_prefix], tmp_path), smoke_tok, eval_iters=0)[1] is None


def test_eval_iters_does_not_change_the_training_samples(tmp_path, smoke_prefix, smoke_tok):
    cfg = data_cfg([smoke_prefix], tmp_path)
    a = list(iterators(cfg, smoke_tok, eval_iters=0)[0])
    b = list(iterators(cfg, smoke_tok, eval_iters=5)[0])
    assert all(torch.equal(x["tokens"], y["tokens"]) for x, y in zip(a, b))


def test_weighted_blend_draws_samples_in_proportion_to_the_weights(tmp_path, smoke_prefix, smoke_tok):
    other = tmp_path / "other"
    for suffix in (".bin", ".idx", ".meta.json"):
        shutil.copy(smoke_prefix + suffix, str(other) + suffix)
    cfg = data_cfg([1, smoke_prefix, 3, str(other)], tmp_path)
    train, _ = build_datasets(cfg, smoke_tok, train_samples=2000, valid_samples=0)
    ids = torch.tensor([int(train[i]["dataset_id"]) for i in range(len(train))])
    assert len(train) == 2000
    assert abs(float((ids == 1).float().mean()) - 0.75) < 0.02


def test_train_iterator_stops_after_train_steps_and_rejects_bad_positions(tmp_path, smoke_prefix, smoke_tok):
    cfg = data_cfg([smoke_prefix], tmp_path)
    assert len(list(iterators(cfg, smoke_tok, steps=2)[0])) == 2 * 8 // 2
    with pytest.raises(ValueError, match="multiple of global_batch_size"):
        iterators(cfg, smoke_tok, consumed=5)
    with pytest.raises(ValueError, match="beyond the run"):
        iterators(cfg, smoke_tok, steps=2, consumed=24)
    with pytest.raises(ValueError, match="micro_batch_size \\* dp_size"):
        iterators(cfg, smoke_tok, mbs=3, gbs=8)


def test_sampler_splits_each_global_batch_into_contiguous_rank_parts():
    kw = dict(total_samples=16, consumed_samples=0, micro_batch_size=2, global_batch_size=8, dp_size=2)
    assert list(PretrainingBatchSampler(dp_rank=0, **kw)) == [[0, 1], [2, 3], [8, 9], [10, 11]]
    assert list(PretrainingBatchSampler(dp_rank=1, **kw)) == [[4, 5], [6, 7], [12, 13], [14, 15]]
    assert len(PretrainingBatchSampler(dp_rank=1, **{**kw, "consumed_samples": 8})) == 2


def test_user_errors_name_the_problem(tmp_path, smoke_prefix, smoke_tok, hf_tokenizer_json):
    from taidtron.data.tokenizer import load_tokenizer

    with pytest.raises(ValueError, match="not found.*preprocess_data"):
        iterators(data_cfg([str(tmp_path / "missing")], tmp_path), smoke_tok)
    with pytest.raises(ValueError, match="data.blend is empty"):
        iterators(data_cfg([], tmp_path), smoke_tok)
    with pytest.raises(ValueError, match="weight 'x'"):
        iterators(data_cfg(["x", smoke_prefix, 1, smoke_prefix], tmp_path), smoke_tok)
    with pytest.raises(ValueError, match="tokenized with .* tokenize the data with data.tokenizer"):
        iterators(data_cfg([smoke_prefix], tmp_path), load_tokenizer(hf_tokenizer_json))
    with pytest.raises(ValueError, match="data.split"):
        iterators(data_cfg([smoke_prefix], tmp_path, split="0,1,0"), smoke_tok)


def test_split_that_leaves_a_part_without_documents_is_refused(tmp_path, smoke_tok, smoke_tokenizer_path):
    src = tmp_path / "tiny.txt"
    src.write_text("Mia lives in Brindle.\nTom is a baker.\nAda has a cat.\n")
    build_indexed_dataset([src], tmp_path / "tiny", smoke_tokenizer_path, progress=False)
    with pytest.raises(ValueError, match="3 documents.*valid part empty"):
        iterators(data_cfg([str(tmp_path / "tiny")], tmp_path), smoke_tok)


def test_rebuilding_a_dataset_under_the_same_prefix_gets_a_fresh_index_cache(
    tmp_path, smoke_tokenizer_path, smoke_texts
):
    src = tmp_path / "a.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in smoke_texts[:50]))
    prefix = str(tmp_path / "ds")
    build_indexed_dataset([src], prefix, smoke_tokenizer_path, progress=False)
    before = index_cache_dir(None, [prefix])
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in smoke_texts[50:100]))
    build_indexed_dataset([src], prefix, smoke_tokenizer_path, force=True, progress=False)
    after = index_cache_dir(None, [prefix])
    assert before != after and Path(after).parent == tmp_path / "cache"


def test_building_without_torch_distributed_leaves_no_process_group(tmp_path, smoke_prefix, smoke_tok):
    assert not dist.is_initialized()
    iterators(data_cfg([1, smoke_prefix, 1, smoke_prefix], tmp_path), smoke_tok)
    assert not dist.is_initialized()
    assert any((tmp_path / "cache").rglob("*.npy"))  # the index cache went where data.cache_dir says


@pytest.mark.multiprocess
def test_two_ranks_under_torchrun_build_the_datasets_and_split_each_global_batch(tmp_path, smoke_prefix, smoke_tok):
    cfg = data_cfg([2, smoke_prefix, 1, smoke_prefix], tmp_path / "reference")
    single = list(iterators(cfg, smoke_tok, mbs=2, gbs=8, steps=3)[0])
    expected = torch.cat([b["tokens"] for b in single]).view(3, 8, SEQ)  # [step, sample, seq]
    results = run_torchrun(
        Path(__file__).parent / "loader_worker.py", 2, smoke_prefix, str(tmp_path / "cache"), timeout=240
    )
    parts = [torch.tensor(r["tokens"]) for r in results]  # [step, 4 samples, seq] each
    assert torch.equal(torch.cat(parts, dim=1), expected)
    assert [r["valid_micro_batches"] for r in results] == [2 * 8 // (2 * 2)] * 2


def test_dataloader_workers_give_the_same_batches_as_the_main_process(tmp_path, smoke_prefix, smoke_tok):
    cfg = data_cfg([smoke_prefix], tmp_path)
    kw = dict(micro_batch_size=2, global_batch_size=8, dp_rank=0, dp_size=1, train_steps=2, eval_iters=1)
    main = list(build_data_iterators(cfg, smoke_tok, **kw)[0])
    workers = list(build_data_iterators(cfg, smoke_tok, num_workers=2, **kw)[0])
    assert len(main) == len(workers) == 8
    assert all(torch.equal(a["tokens"], b["tokens"]) for a, b in zip(main, workers))


def test_test_iterator_reads_one_pass_over_the_test_documents_only(tmp_path, smoke_prefix, smoke_tok):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from taidtron.data.loader import build_test_iterator

    cfg = data_cfg([smoke_prefix], tmp_path, split="90,5,5")
    ds = IndexedDataset(smoke_prefix)
    docs = [tuple(ds[i].tolist()) for i in range(len(ds))]
    first_test = int(round(0.95 * len(docs)))  # megatron-core's document range of the third share
    test_docs = set(docs[first_test:])
    test_tokens = sum(len(d) for d in docs[first_test:])
    batches, num_batches = build_test_iterator(
        cfg, smoke_tok, micro_batch_size=2, global_batch_size=8, dp_rank=0, dp_size=1
    )
    batches = list(batches)
    assert num_batches == (test_tokens - 1) // SEQ // 8  # every full global batch of one epoch of the split
    assert len(batches) == num_batches * 8 // 2
    windows = [
        tokens + labels[-1:] for b in batches for tokens, labels in zip(b["tokens"].tolist(), b["labels"].tolist())
    ]
    assert len({tuple(w) for w in windows}) == len(windows)  # one pass: no window twice
    for window in windows:
        ends = [i for i, t in enumerate(window) if t == smoke_tok.eod]
        for a, b in zip(ends, ends[1:]):
            assert tuple(window[a + 1 : b + 1]) in test_docs
        if ends:
            head = tuple(window[: ends[0] + 1])
            assert any(d[-len(head) :] == head for d in test_docs)


def test_test_iterator_splits_batches_over_dp_ranks_and_caps_at_max_batches(tmp_path, smoke_prefix, smoke_tok):
    from taidtron.data.loader import build_test_iterator

    cfg = data_cfg([smoke_prefix], tmp_path, split="90,5,5")
    kw = dict(micro_batch_size=2, global_batch_size=8)
    single, n = build_test_iterator(cfg, smoke_tok, dp_rank=0, dp_size=1, max_batches=3, **kw)
    single = torch.cat([b["tokens"] for b in single])
    assert n == 3 and single.shape == (3 * 8, SEQ)
    parts = [list(build_test_iterator(cfg, smoke_tok, dp_rank=r, dp_size=2, max_batches=3, **kw)[0]) for r in (0, 1)]
    for step in range(3):
        glob = single[step * 8 : (step + 1) * 8]
        halves = [torch.cat([b["tokens"] for b in parts[r][step * 2 : (step + 1) * 2]]) for r in (0, 1)]
        assert torch.equal(torch.cat(halves), glob)


def test_test_iterator_refuses_a_split_without_test_share_and_unsized_weighted_blends(
    tmp_path, smoke_prefix, smoke_tok
):
    from taidtron.data.loader import build_test_iterator

    kw = dict(micro_batch_size=2, global_batch_size=8, dp_rank=0, dp_size=1)
    with pytest.raises(ValueError, match="no test share"):
        build_test_iterator(data_cfg([smoke_prefix], tmp_path, split="95,5,0"), smoke_tok, **kw)
    with pytest.raises(ValueError, match="weighted data.blend needs a number of test batches"):
        build_test_iterator(data_cfg([1, smoke_prefix, 1, smoke_prefix], tmp_path, split="90,5,5"), smoke_tok, **kw)
    with pytest.raises(ValueError, match="max_batches=0"):
        build_test_iterator(data_cfg([smoke_prefix], tmp_path, split="90,5,5"), smoke_tok, max_batches=0, **kw)


def test_an_index_build_waits_while_another_process_holds_the_cache_lock(tmp_path, smoke_prefix, smoke_tokenizer_path):
    """Two jobs sharing a dataset directory: the second one's rank 0 waits for the first's index build, then reads
    the finished cache (megatron writes the .npy files in place; without the lock it would rebuild them over the
    first job's reads)."""
    import fcntl
    import subprocess
    import sys
    import time

    from tests.support import subprocess_env

    cache = tmp_path / "cache"
    blend_cache = Path(index_cache_dir(str(cache), [smoke_prefix]))
    blend_cache.mkdir(parents=True)
    script = (
        "from taidtron.config import DataConfig\n"
        "from taidtron.data.loader import build_datasets\n"
        "from taidtron.data.tokenizer import load_tokenizer\n"
        f"cfg = DataConfig(blend=[{smoke_prefix!r}], seq_length={SEQ}, cache_dir={str(cache)!r})\n"
        f"build_datasets(cfg, load_tokenizer({str(smoke_tokenizer_path)!r}), train_samples=64, valid_samples=16)\n"
        "print('built')\n"
    )
    with open(blend_cache / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # "the first job", building
        proc = subprocess.Popen(
            [sys.executable, "-c", script], env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        inode = (blend_cache / ".lock").stat().st_ino
        deadline = time.monotonic() + 300
        # /proc/locks lists a process blocked on a lock as "-> FLOCK ... <major>:<minor>:<inode> ..."
        while not any("->" in line and f":{inode} " in line for line in Path("/proc/locks").read_text().splitlines()):
            assert proc.poll() is None, proc.communicate()[0].decode()[-3000:]
            assert time.monotonic() < deadline, "the second build never reached the lock"
            time.sleep(0.2)
        assert not list(blend_cache.glob("*.npy")), "the second build wrote the cache while the lock was held"
    output = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 0 and "built" in output, output[-3000:]
    assert list(blend_cache.glob("*.npy"))
