"""Data: the shared tokenizer, building megatron indexed datasets, and loading batches from them.

The trainer needs three calls:

    tokenizer = load_shared_tokenizer(cfg.data)            # checks teacher_tokenizer == tokenizer
    datasets = check_blend(cfg.data, tokenizer)            # files, index, sizes, tokenizer; before building models
    train_iter, make_valid_iter = build_data_iterators(cfg.data, tokenizer, micro_batch_size=..., ...)

and held-out evaluation (`taidtron.evaluate`) reads the test split with `build_test_iterator`.
"""

from taidtron.data.indexed import build_indexed_dataset
from taidtron.data.loader import (
    PretrainingBatchSampler,
    build_data_iterators,
    build_datasets,
    build_test_iterator,
    dataset_content_key,
    load_batches,
)
from taidtron.data.tokenizer import Tokenizer, check_same_tokenizer, load_shared_tokenizer, load_tokenizer
from taidtron.data.tokenizer_training import train_sentencepiece
from taidtron.data.validate import DataError, DatasetSummary, check_blend

__all__ = [
    "DataError",
    "DatasetSummary",
    "PretrainingBatchSampler",
    "Tokenizer",
    "build_data_iterators",
    "build_datasets",
    "build_indexed_dataset",
    "build_test_iterator",
    "check_blend",
    "check_same_tokenizer",
    "dataset_content_key",
    "load_batches",
    "load_shared_tokenizer",
    "load_tokenizer",
    "train_sentencepiece",
]
