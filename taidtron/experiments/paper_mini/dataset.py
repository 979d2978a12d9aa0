"""The experiment's data under `<work>/data`: the corpus (`corpus.py`), a sentencepiece tokenizer trained on all of
it, and one megatron indexed dataset per domain (`general`: every page outside the target sections; `target`: the
target sections' pages). Each step is redone only when its input changed."""

from __future__ import annotations

import os
from pathlib import Path

from taidtron.experiments.paper_mini.corpus import build_corpus, fetch_deb, split_domains
from taidtron.experiments.paper_mini.design import Design
from taidtron.experiments.paper_mini.paths import REPO, read_json, rel
from taidtron.io import atomic_write_json

DEB_CACHE = REPO / "runs" / "pydoc_deb"
TOKENIZER_COVERAGE = 0.9995
"""Characters rarer than this become <unk> (the manual quotes many scripts)."""
DOMAINS = ("general", "target")


def prefix(work: Path, domain: str) -> Path:
    """The indexed dataset of a domain (path without .bin/.idx)."""
    return work / "data" / f"pydoc_{domain}_text_document"


def tokenizer_path(work: Path) -> Path:
    return work / "data" / "tokenizer.model"


def prepare_data(work: Path, design: Design, deb: Path | None, splits: dict[str, str]) -> dict:
    """Corpus, tokenizer and the domains' datasets; returns what the page reports about them. `splits`: the
    data.split of each domain (train, valid, test shares by pages)."""
    from taidtron.data import build_indexed_dataset, load_tokenizer, train_sentencepiece

    data = work / "data"
    corpus = build_corpus(deb or fetch_deb(DEB_CACHE), data, design.max_pages)
    sections = design.transfer.sections if design.transfer else ()
    domains = split_domains(data / "pydoc.jsonl", data, sections)
    want = {
        "text_sha256": corpus["text_sha256"],
        "vocab_size": design.vocab_size,
        "coverage": TOKENIZER_COVERAGE,
        "target_sections": list(sections),
    }
    built = read_json(data / "build.json")
    outputs = [tokenizer_path(work)] + [Path(f"{prefix(work, d)}.idx") for d in DOMAINS]
    if not (built and {k: built.get(k) for k in want} == want and all(p.is_file() for p in outputs)):
        train_sentencepiece(
            [data / "pydoc.jsonl"],
            data / "tokenizer",
            vocab_size=design.vocab_size,
            character_coverage=TOKENIZER_COVERAGE,
        )
        tokens = {}
        for domain in DOMAINS:
            stats = build_indexed_dataset(
                [data / f"{domain}.jsonl"],
                prefix(work, domain),
                tokenizer_path(work),
                workers=min(2, os.cpu_count() or 1),
                force=True,
                progress=False,
            )
            tokens[domain] = stats["tokens"]
        built = {**want, "tokenizer_fingerprint": load_tokenizer(tokenizer_path(work)).fingerprint(), "tokens": tokens}
        atomic_write_json(data / "build.json", built)
    return {
        "corpus": corpus,
        "tokenizer": rel(tokenizer_path(work)),
        "domains": {
            domain: {
                **domains[domain],
                "prefix": rel(prefix(work, domain)),
                "split": splits[domain],
                "parts": split_parts(prefix(work, domain), splits[domain]),
            }
            for domain in DOMAINS
        },
        **built,
    }


def split_parts(dataset_prefix: Path, split: str) -> dict[str, dict]:
    """Pages and tokens in the train / valid / test shares of a dataset, with megatron-core's rounding of the
    document ranges."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from taidtron.data.loader import parse_split

    dataset = IndexedDataset(str(dataset_prefix))
    lengths = [int(n) for n in dataset.sequence_lengths]  # copied: the array is a view of the dataset's mmap
    del dataset
    bounds, cumulative = [0], 0.0
    for share in parse_split(split):
        cumulative += share
        bounds.append(int(round(cumulative * len(lengths))))
    return {
        name: {"documents": end - beg, "tokens": sum(lengths[beg:end])}
        for name, beg, end in zip(("train", "valid", "test"), bounds, bounds[1:])
    }
