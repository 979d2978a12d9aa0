"""The tokenizer both models share: a sentencepiece `.model` or a Hugging Face `tokenizer.json`.

    tok = load_tokenizer("data/smoke/tokenizer.model")
    ids = tok.tokenize("Mia has a red ball.")       # list[int], no BOS, no EOD
    tok.eod, tok.vocab_size, tok.fingerprint()
    tok.bos, tok.bos_default                        # whether documents start with BOS unless told otherwise

`Tokenizer` implements what megatron-core 0.16.1's `GPTDataset` reads from `GPTDatasetConfig.tokenizer`
(`vocab_size`, `eod`, `pad`, `unique_identifiers`) on top of `MegatronTokenizerBase`, the base class that config
field is typed with. Distillation needs the student and the teacher to index the same vocabulary, so
`check_same_tokenizer` compares `fingerprint()`s (a hash of id -> piece and the special ids) and the trainer
refuses to start when they differ.

Whether a document starts with BOS is the tokenizer's to say, as transformers reads it: `add_bos_token` in the
`tokenizer_config.json` beside the tokenizer file, else what a tokenizer.json's post-processor puts before a text
(Llama 3's template adds `<|begin_of_text|>`, Qwen2's adds nothing). A bare sentencepiece `.model` states nothing:
its default is no BOS (sentencepiece itself adds one only when asked, and `tools/convert.py export` ships a
`.model` with `add_bos_token: false`), and either choice is accepted for it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron.core.tokenizers import MegatronTokenizerBase

# End-of-document candidates for tokenizer.json files, most specific first (Qwen2, Llama 3, Llama 2/Mistral, Gemma).
_HF_EOD_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "[SEP]")
_HF_PAD_CANDIDATES = ("<pad>", "<|pad|>", "[PAD]", "<|padding|>")

NO_PAD = -1
"""`Tokenizer.pad` when the vocabulary has no dedicated pad token (a value never present in the data)."""

_PROBE_TEXT = "a"  # encoded with and without special tokens to see what a tokenizer.json's post-processor adds


@dataclass(frozen=True)
class BosDefault:
    """Whether documents start with the BOS token unless the user says otherwise, and on whose word."""

    add: bool
    stated: bool  # the tokenizer's files say so (tokenizer_config.json, tokenizer.json's post-processor)
    source: str  # for the start line, the .meta.json and error messages


class _SentencePieceBackend:
    kind = "sentencepiece"

    def __init__(self, path: Path) -> None:
        import sentencepiece

        self.sp = sentencepiece.SentencePieceProcessor()
        try:
            self.sp.Load(str(path))
        except (OSError, RuntimeError) as exc:
            raise ValueError(
                f"{path} is not a valid sentencepiece model ({exc}); pass a .model file written by "
                "tools/train_tokenizer.py or spm_train."
            ) from None

    def encode(self, text: str) -> list[int]:
        return self.sp.EncodeAsIds(text)

    def decode(self, ids: list[int]) -> str:
        return self.sp.DecodeIds(ids)

    def size(self) -> int:
        return self.sp.GetPieceSize()

    def pieces(self) -> list[str]:
        return [self.sp.IdToPiece(i) for i in range(self.size())]

    def special_ids(self, eod_token: str | None) -> tuple[int, int, int | None]:
        eod = self.sp.eos_id() if eod_token is None else self._piece_id(eod_token)
        if eod < 0:
            raise ValueError(
                "the sentencepiece model has no end-of-sequence piece (trained with eos_id=-1), so "
                "documents cannot be separated; retrain it with tools/train_tokenizer.py or pass "
                "eod_token=<an existing piece>."
            )
        pad = self.sp.pad_id()
        bos = self.sp.bos_id()
        return eod, pad if pad >= 0 else NO_PAD, bos if bos >= 0 else None

    def _piece_id(self, piece: str) -> int:
        i = self.sp.PieceToId(piece)
        if self.sp.IdToPiece(i) != piece:  # unknown pieces map to unk
            raise ValueError(f"eod_token {piece!r} is not a piece of this sentencepiece model.")
        return i


class _HFBackend:
    kind = "hf-tokenizers"

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        try:
            self.tk = HFTokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises a bare Exception on malformed files
            raise ValueError(f"{path} is not a valid Hugging Face tokenizer.json ({exc}).") from None
        self.vocab = self.tk.get_vocab(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        # No BOS/EOS templates: pretraining documents are separated by the EOD the preprocessor appends.
        return self.tk.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tk.decode(ids, skip_special_tokens=False)

    def size(self) -> int:
        # Ids need not be dense (added tokens may leave holes); the embedding must cover the largest one.
        return max(self.vocab.values()) + 1 if self.vocab else 0

    def pieces(self) -> list[str]:
        out = [""] * self.size()
        for piece, i in self.vocab.items():
            out[i] = piece
        return out

    def special_ids(self, eod_token: str | None) -> tuple[int, int, int | None]:
        if eod_token is not None:
            if eod_token not in self.vocab:
                raise ValueError(f"eod_token {eod_token!r} is not in this tokenizer.json's vocabulary.")
            eod = self.vocab[eod_token]
        else:
            found = [t for t in _HF_EOD_CANDIDATES if t in self.vocab]
            if not found:
                raise ValueError(
                    "cannot find an end-of-document token in this tokenizer.json (looked for "
                    f"{', '.join(_HF_EOD_CANDIDATES)}); pass eod_token=<the token>."
                )
            eod = self.vocab[found[0]]
        pads = [self.vocab[t] for t in _HF_PAD_CANDIDATES if t in self.vocab and self.vocab[t] != eod]
        prefix = self.template_prefix()
        return eod, pads[0] if pads else NO_PAD, prefix[0] if len(prefix) == 1 else None

    def template_prefix(self) -> list[int]:
        """The ids the post-processor puts before a text (its BOS), [] when it adds none."""
        plain = self.tk.encode(_PROBE_TEXT, add_special_tokens=False).ids
        full = self.tk.encode(_PROBE_TEXT, add_special_tokens=True).ids
        for start in range(len(full) - len(plain) + 1):
            if full[start : start + len(plain)] == plain:
                return full[:start]
        return []


class Tokenizer(MegatronTokenizerBase):
    """A loaded tokenizer; see `load_tokenizer`. `tokenize` adds no BOS; the data pipeline adds `bos` (as
    `bos_default` or the user says) and appends `eod`."""

    def __init__(self, path: Path, backend: _SentencePieceBackend | _HFBackend, eod_token: str | None = None) -> None:
        super().__init__(str(path), {})
        self._backend = backend
        self._eod, self._pad, self._bos = backend.special_ids(eod_token)
        self.bos_default = self._read_bos_default(path)
        self._fingerprint: str | None = None
        # megatron-core hashes this into the name of its sample-index cache: key it on the vocabulary, not the path,
        # so moving the file keeps the cache and swapping the vocabulary invalidates it.
        self.unique_identifiers = OrderedDict(cls=type(self).__name__, fingerprint=self.fingerprint())

    @property
    def kind(self) -> str:
        """`sentencepiece` or `hf-tokenizers`."""
        return self._backend.kind

    def tokenize(self, text: str) -> list[int]:
        return self._backend.encode(text)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._backend.decode([int(i) for i in ids])

    @property
    def vocab_size(self) -> int:
        """Number of token ids (largest id + 1). Models may pad their embedding beyond it."""
        return self._backend.size()

    @property
    def vocab(self) -> dict[str, int]:
        return {piece: i for i, piece in enumerate(self._backend.pieces())}

    @property
    def inv_vocab(self) -> dict[int, str]:
        return dict(enumerate(self._backend.pieces()))

    @property
    def eod(self) -> int:
        """End-of-document id, appended to every document by the preprocessor."""
        return self._eod

    @property
    def eos(self) -> int:
        return self._eod

    @property
    def pad(self) -> int:
        """Dedicated pad id, or NO_PAD (-1) when the vocabulary has none. Never equal to `eod`."""
        return self._pad

    @property
    def bos(self) -> int | None:
        """Beginning-of-sequence id (tokenizer_config.json's `bos_token`, the sentencepiece BOS, or what a
        tokenizer.json's post-processor prepends), or None when the tokenizer has none."""
        return self._bos

    @property
    def unk_piece(self) -> str | None:
        """The unknown-token piece of a sentencepiece model (None: none, or a Hugging Face tokenizer)."""
        sp = getattr(self._backend, "sp", None)
        return sp.IdToPiece(sp.unk_id()) if sp is not None and sp.unk_id() >= 0 else None

    def _read_bos_default(self, path: Path) -> BosDefault:
        config_path = path.parent / "tokenizer_config.json"
        config: dict = {}
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                config = exc  # type: ignore[assignment]
            if not isinstance(config, dict):
                raise ValueError(f"{config_path} is unreadable ({config!s:.80}); fix it or remove it.")
        bos_token = config.get("bos_token")
        if isinstance(bos_token, dict):  # an AddedToken written out
            bos_token = bos_token.get("content")
        if isinstance(bos_token, str) and bos_token in (vocab := self.vocab):
            self._bos = vocab[bos_token]
        if isinstance(config.get("add_bos_token"), bool):
            add = config["add_bos_token"]
            return BosDefault(add, True, f"{config_path.name} add_bos_token={str(add).lower()}")
        if isinstance(self._backend, _HFBackend):
            prefix = self._backend.template_prefix()
            if prefix:
                return BosDefault(True, True, f"{path.name}'s post-processor adds {self.inv_vocab[prefix[0]]}")
            return BosDefault(False, True, f"{path.name}'s post-processor adds no BOS")
        where = "whose tokenizer_config.json has no add_bos_token" if config_path.is_file() else "alone"
        return BosDefault(False, False, f"a sentencepiece model {where}: sentencepiece adds no BOS unless asked")

    def apply_chat_template(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("taidtron pretrains on raw text; chat templates are not supported.")

    def fingerprint(self) -> str:
        """sha256 over the id -> piece table, the vocabulary size and the special ids (eod, pad).

        Two tokenizers with equal fingerprints map every id to the same piece, so logits of models trained with
        them index the same vocabulary. Normalisation/merge rules are not hashed: pre-tokenised data only needs ids.
        """
        if self._fingerprint is None:
            payload = json.dumps(
                {"pieces": self._backend.pieces(), "eod": self._eod, "pad": self._pad},
                ensure_ascii=False,
                separators=(",", ":"),
            )
            self._fingerprint = hashlib.sha256(payload.encode("utf-8")).hexdigest()
        return self._fingerprint

    def __repr__(self) -> str:
        return (
            f"Tokenizer(path={self.path!r}, kind={self.kind}, vocab_size={self.vocab_size}, eod={self.eod}, "
            f"pad={self.pad}, fingerprint={self.fingerprint()[:12]})"
        )


TOKENIZER_FILE_NAMES = ("tokenizer.json", "tokenizer.model")
"""What a directory given as a tokenizer (an HF model folder) is searched for, in this order."""


def _resolve(path: str | os.PathLike) -> Path:
    """A tokenizer file, or a directory holding tokenizer.json or tokenizer.model (an HF model folder)."""
    p = Path(path)
    if str(path) == "":
        raise ValueError("no tokenizer given; set data.tokenizer to a sentencepiece .model or a tokenizer.json.")
    if p.is_dir():
        for name in TOKENIZER_FILE_NAMES:
            if (p / name).is_file():
                return p / name
        raise ValueError(
            f"directory {p} holds neither tokenizer.json nor tokenizer.model; point data.tokenizer "
            "at the tokenizer file itself."
        )
    if not p.is_file():
        raise ValueError(
            f"tokenizer file {p} does not exist; check data.tokenizer (build one with "
            "tools/train_tokenizer.py, or use data/smoke/tokenizer.model)."
        )
    return p


def load_tokenizer(path: str | os.PathLike, *, eod_token: str | None = None) -> Tokenizer:
    """Load a sentencepiece `.model` or a Hugging Face `tokenizer.json` (a directory holding one also works).

    The format comes from the suffix (`.model` / `.json`), else from the content (JSON starts with `{`).
    `eod_token` overrides the end-of-document piece: by default the sentencepiece EOS, or for tokenizer.json the
    first of <|endoftext|>, <|end_of_text|>, </s>, <eos> that exists. Raises ValueError on a missing file or an
    unknown format.
    """
    p = _resolve(path)
    if p.suffix == ".json":
        backend: _SentencePieceBackend | _HFBackend = _HFBackend(p)
    elif p.suffix == ".model":
        backend = _SentencePieceBackend(p)
    else:
        with open(p, "rb") as f:
            head = f.read(64).lstrip()
        if head.startswith(b"{"):
            backend = _HFBackend(p)
        elif head[:1] == b"\n":  # a serialized ModelProto starts with field 1 (pieces), wire type 2
            backend = _SentencePieceBackend(p)
        else:
            raise ValueError(
                f"unknown tokenizer format for {p}: expected a sentencepiece .model or a Hugging Face tokenizer.json."
            )
    return Tokenizer(p, backend, eod_token)


def _first_difference(a: Tokenizer, b: Tokenizer) -> str:
    pa, pb = a._backend.pieces(), b._backend.pieces()
    for i, (x, y) in enumerate(zip(pa, pb)):
        if x != y:
            return f"first differing id {i}: {x!r} vs {y!r}"
    if len(pa) != len(pb):
        return f"vocabulary sizes differ: {len(pa)} vs {len(pb)}"
    return f"special ids differ: eod {a.eod} vs {b.eod}, pad {a.pad} vs {b.pad}"


def check_same_tokenizer(student_tok: Tokenizer, teacher_tok: Tokenizer) -> None:
    """Raise ValueError unless both tokenizers have the same vocabulary and special ids (equal fingerprints)."""
    if student_tok.fingerprint() == teacher_tok.fingerprint():
        return
    raise ValueError(
        "the student and teacher tokenizers differ, so their logits index different vocabularies and cannot be "
        f"distilled: student {student_tok!r}; teacher {teacher_tok!r}; {_first_difference(student_tok, teacher_tok)}. "
        "Use one tokenizer for both models: set data.teacher_tokenizer to the same file as data.tokenizer (or to "
        "null), and tokenize the data with it."
    )


def load_shared_tokenizer(data_cfg: Any) -> Tokenizer:
    """The tokenizer of `data_cfg.tokenizer`, after checking that `data_cfg.teacher_tokenizer` (if set) equals it."""
    tok = load_tokenizer(data_cfg.tokenizer)
    if data_cfg.teacher_tokenizer:
        check_same_tokenizer(tok, load_tokenizer(data_cfg.teacher_tokenizer))
    return tok
