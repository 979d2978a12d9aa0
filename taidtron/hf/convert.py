"""Hugging Face Llama / Qwen2 directory <-> taidtron checkpoint: `import_hf` and `export_hf`.

import: a local HF directory (config.json + model.safetensors, or shards with model.safetensors.index.json) becomes
    one taidtron iteration directory without optimizer state, loadable as `teacher.init` / `student.init` at any
    tp/pp. The model's structure is built at tp=pp=1 on the meta device (no weights) and the checkpoint written
    from it one tensor at a time, each read from the safetensors as it is stored (`taidtron.hf.streaming`).
export: the model of any taidtron checkpoint (the student of a distillation run; a run's directory, following
    `latest`, or one iteration directory, saved at any tp/pp) becomes an HF directory that
    `AutoModelForCausalLM.from_pretrained` loads, with the run's tokenizer. One layer at a time is read.

Both run in this process as a gloo world of one on CPU (megatron-core's model and dist_checkpointing need a
process group), and write their output atomically: a hidden sibling directory renamed into place at the end and
removed on any error. A process that sees CUDA is refused: hide the GPUs before torch is imported
(`tools/convert.py` does).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from taidtron import checkpoint
from taidtron.checkpoint import CheckpointMeta
from taidtron.config import ModelConfig
from taidtron.hf.config import hf_config, model_config_from_hf, read_hf_config
from taidtron.hf.errors import ConvertError
from taidtron.hf.keymap import expected_hf_keys, hf_shapes, key_map, to_hf
from taidtron.hf.shards import SAFETENSORS_DTYPES, SafetensorsReader, ShardWriter, parse_size
from taidtron.hf.streaming import StreamedWeights, check_shapes

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)
# Old checkpoints carry RoPE caches as tensors; they are recomputed from the base, never weights.
IGNORED_HF_SUFFIXES = (".rotary_emb.inv_freq",)

# ----------------------------------------------------------------------------------------------------------
# shared


def _require_cpu_process() -> None:
    if torch.cuda.is_available():
        raise ConvertError(
            "this process sees CUDA devices, and the conversion runs on CPU (megatron-core would take "
            "its GPU path): run `python tools/convert.py`, which hides the GPUs, or set "
            "CUDA_VISIBLE_DEVICES= in the environment before torch is imported."
        )


@contextlib.contextmanager
def _world_of_one() -> Iterator:
    """A gloo world of one with megatron's parallel state at tp=pp=1 (what build_gpt and dist_checkpointing need),
    a world of one even inside a SLURM allocation; torn down on exit."""
    import torch.distributed as dist

    from taidtron import overrides
    from taidtron.config import ParallelConfig
    from taidtron.distributed import LaunchEnv, destroy_distributed, init_distributed, seed_everything

    if dist.is_initialized():
        raise ConvertError(
            "the conversion makes its own single-process world, and this process already has a "
            "torch.distributed world: call it from a separate process (e.g. tools/convert.py)."
        )
    ctx = init_distributed(ParallelConfig(), launch=LaunchEnv.single())
    seed_everything(0, ctx)
    try:
        overrides.prepare_writer()
        yield ctx
    finally:
        destroy_distributed()


def _check_output(out: Path, force: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ConvertError(
            f"output {out} exists and is not empty; choose another directory or pass --force to replace it."
        )


@contextlib.contextmanager
def _atomic_output(out: Path) -> Iterator[Path]:
    """The hidden sibling `.tmp_<name>` to write into: renamed to `out` when the block succeeds, removed when it
    raises, whatever the error."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp_{out.name}")
    if tmp.exists():
        shutil.rmtree(tmp)  # left by a conversion that was killed
    tmp.mkdir()
    try:
        yield tmp
        checkpoint.replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _progress(total: int, desc: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="tensor", dynamic_ncols=True, disable=quiet)


# ----------------------------------------------------------------------------------------------------------
# import: HF -> taidtron


def _check_hf_keys(reader: SafetensorsReader, model_cfg: ModelConfig, hf_dir: Path) -> None:
    """Every tensor the key map needs is there, and nothing unknown is left over (it would be dropped silently)."""
    expected = expected_hf_keys(model_cfg)
    present = {k for k in reader.location if not k.endswith(IGNORED_HF_SUFFIXES)}
    missing = sorted(expected - present)
    if missing:
        raise ConvertError(
            f"{hf_dir} lacks {len(missing)} tensor(s) its config.json implies, e.g. "
            f"{', '.join(missing[:4])}; the weights do not match the config."
        )
    leftover = present - expected
    if model_cfg.tie_embeddings:
        leftover.discard("lm_head.weight")  # some tied checkpoints store the shared matrix twice
    if leftover:
        raise ConvertError(
            f"{hf_dir} has {len(leftover)} tensor(s) a plain {model_cfg.family} model does not have,"
            f" e.g. {', '.join(sorted(leftover)[:4])}; they would be dropped, so the conversion "
            f"stops. Only Llama / Qwen2 decoders without extra modules are supported."
        )


def _import_tokenizer(hf_dir: Path, tokenizer: str | None, model_cfg: ModelConfig) -> checkpoint.TokenizerRef:
    """The tokenizer an import records: `--tokenizer` (a file or a folder holding one), else the HF folder's own
    (tokenizer.json, else tokenizer.model), fingerprinted as the data pipeline fingerprints `data.tokenizer`;
    `unknown` when the folder holds none."""
    from taidtron.data.tokenizer import TOKENIZER_FILE_NAMES, load_tokenizer

    if tokenizer is None:
        if not any((hf_dir / name).is_file() for name in TOKENIZER_FILE_NAMES):
            return checkpoint.TokenizerRef.unknown(hf_dir)
        source = hf_dir
    else:
        source = Path(tokenizer)
        if not source.exists():
            raise ConvertError(
                f"--tokenizer {source} does not exist; pass the tokenizer the model was trained with (a "
                f"tokenizer.json or sentencepiece .model, or a folder holding one)."
            )
    try:
        tok = load_tokenizer(source)
    except ValueError as exc:
        raise ConvertError(
            f"the tokenizer of {source} cannot be read ({exc}); pass the one the model was trained with as "
            f"--tokenizer PATH."
        ) from None
    if tok.vocab_size > model_cfg.vocab_size:
        raise ConvertError(
            f"the tokenizer {tok.path} has {tok.vocab_size} tokens, more than the model's vocabulary of "
            f"{model_cfg.vocab_size} (config.json vocab_size): it is not this model's tokenizer. Pass the one the "
            f"model was trained with as --tokenizer PATH."
        )
    return checkpoint.TokenizerRef.of(source, tok.fingerprint())


def import_hf(
    hf_dir: str | Path,
    out: str | Path,
    *,
    force: bool = False,
    dtype: str = "auto",
    quiet: bool = False,
    tokenizer: str | None = None,
) -> CheckpointMeta:
    """HF directory -> taidtron iteration directory `out`. Returns the metadata written.

    `dtype`: `auto` (the HF weights' own) or a torch dtype name (`float32`, `bfloat16`, `float16`). `tokenizer`:
    the tokenizer to record (default: the folder's own; see `_import_tokenizer`). Raises ConvertError
    (UnsupportedModelError for architectures it cannot represent exactly) naming what to change."""
    _require_cpu_process()
    hf_dir, out = Path(hf_dir), Path(out)
    if not hf_dir.is_dir():
        raise ConvertError(
            f"--hf {hf_dir} is not a directory; pass a local Hugging Face model folder (config.json + *.safetensors)."
        )
    if not (hf_dir / "config.json").is_file():
        raise ConvertError(f"{hf_dir} has no config.json; pass a Hugging Face model folder.")
    hf = read_hf_config(hf_dir)
    model_cfg = model_config_from_hf(hf)
    _check_output(out, force)
    tokenizer_ref = _import_tokenizer(hf_dir, tokenizer, model_cfg)
    reader = SafetensorsReader(hf_dir)
    _check_hf_keys(reader, model_cfg, hf_dir)
    entries = key_map(model_cfg)
    source_dtypes = {reader.dtype(name) for *_, names in entries for name in names}
    if dtype == "auto":
        if len(source_dtypes) != 1 or next(iter(source_dtypes)) not in SAFETENSORS_DTYPES:
            raise ConvertError(
                f"{hf_dir} mixes or uses unsupported weight dtypes {sorted(source_dtypes)}; pass "
                f"--dtype float32 or bfloat16."
            )
        params_dtype = SAFETENSORS_DTYPES[next(iter(source_dtypes))]
    elif dtype in ("float32", "bfloat16", "float16"):
        params_dtype = getattr(torch, dtype)
    else:
        raise ConvertError(f"dtype {dtype!r} is not one of auto, float32, bfloat16, float16.")

    from taidtron.config import ParallelConfig
    from taidtron.models import build_gpt

    padded_vocab = -(-model_cfg.vocab_size // 128) * 128  # any tp pads further at load time (zero rows)
    with _world_of_one() as ctx:
        model = build_gpt(  # on the meta device: the structure and shapes to save, no weights
            model_cfg,
            ParallelConfig(),
            padded_vocab_size=padded_vocab,
            max_seq_length=int(hf.get("max_position_embeddings", 4096)),
            pp_rank=0,
            params_dtype=params_dtype,
            device=torch.device("meta"),
            initialize=False,
        )
        params = {name: tuple(param.shape) for name, param in model.named_parameters()}
        targets = {megatron for _, _, megatron, _, _ in entries}
        assert set(params) == targets, f"key map out of date: {sorted(set(params) ^ targets)}"
        check_shapes(reader, model_cfg, padded_vocab, params, hf_dir)
        source = checkpoint.WeightsSource(
            kind="hf_import",
            description=f"tools/convert.py import of {hf_dir}",
            path=str(hf_dir.resolve()),
            hf_config=hf,
        )
        meta = CheckpointMeta(model=model_cfg, padded_vocab_size=padded_vocab, source=source, tokenizer=tokenizer_ref)
        with _progress(len(entries), f"import {hf_dir.name}", quiet) as bar:
            # Each weight is read from the safetensors when the writer stores it; the content id hashes what was
            # read, so that re-importing the same weights is recognised.
            weights = StreamedWeights(reader, model_cfg, padded_vocab, params_dtype, on_read=lambda: bar.update(1))
            checkpoint.save_model(  # atomic: a temporary sibling, renamed
                out, model=model, meta=meta, ctx=ctx, overwrite=True, materialize=weights, content_id=weights.content_id
            )
    return checkpoint.read_meta(out)


# ----------------------------------------------------------------------------------------------------------
# export: taidtron -> HF


@dataclass(frozen=True)
class ExportSummary:
    out: Path
    tensors: int
    """HF tensors written."""
    shards: int
    bytes: int
    """Bytes of tensor data."""
    dtype: str
    tokenizer_files: list[str]
    step: int
    """The checkpoint's step."""
    notes: list[str]
    """What the user should know (e.g. no tokenizer was shipped, and why)."""


def _hf_base_config(meta: CheckpointMeta, notes: list[str]) -> dict | None:
    """An original HF config to take the fields taidtron does not model from: the checkpoint's own (an import),
    else that of the checkpoint its model was initialised from, and so on."""
    seen: set[str] = set()
    while meta.source.hf_config is None and meta.model.init and meta.model.init not in seen:
        seen.add(meta.model.init)
        try:
            meta = checkpoint.read_meta(meta.model.init)
        except checkpoint.CheckpointError as exc:
            notes.append(
                f"the model's init checkpoint is unreadable ({exc}); config.json takes taidtron's "
                f"defaults for the fields it does not model (max_position_embeddings, token ids)."
            )
            return None
    return meta.source.hf_config


def _tokenizer_source(meta: CheckpointMeta, override: str | None) -> Path | None:
    """--tokenizer, else the tokenizer the weights were trained with, else an import's HF folder."""
    if override:
        path = Path(override)
        if not path.exists():
            raise ConvertError(
                f"--tokenizer {path} does not exist; pass a tokenizer file (.model / tokenizer.json) or "
                f"a folder holding one."
            )
        return path
    if meta.tokenizer is not None and meta.tokenizer.known:
        return Path(meta.tokenizer.path)
    if meta.source.path is not None:
        return Path(meta.source.path)
    return None


def _write_tokenizer(source: Path, tmp: Path, model_max_length: int) -> tuple[list[str], dict]:
    """Copy the tokenizer files into the export; returns (files written, special token ids for the configs).
    A sentencepiece .model without its own tokenizer_config.json gets a minimal one (LlamaTokenizer, no BOS/EOS
    added: the training data was encoded without them)."""
    from taidtron.data.tokenizer import TOKENIZER_FILE_NAMES, load_tokenizer

    written: list[str] = []
    if source.is_dir():
        for name in TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, tmp / name)
                written.append(name)
        tok_file = next((source / n for n in TOKENIZER_FILE_NAMES if (source / n).is_file()), None)
    else:
        tok_file = source
        target = "tokenizer.json" if source.suffix == ".json" else "tokenizer.model"
        shutil.copy2(source, tmp / target)
        written.append(target)
        for sibling in ("tokenizer_config.json", "special_tokens_map.json"):
            if source.suffix == ".json" and (source.parent / sibling).is_file():
                shutil.copy2(source.parent / sibling, tmp / sibling)
                written.append(sibling)
    if tok_file is None:
        return written, {}
    try:
        tok = load_tokenizer(tok_file)
    except Exception as exc:  # sentencepiece / tokenizers raise their own types for a damaged file
        raise ConvertError(
            f"tokenizer {tok_file} cannot be read ({type(exc).__name__}: {exc}); pass a valid one with --tokenizer."
        ) from None
    special = {"eos_token_id": tok.eod, "bos_token_id": tok.bos, "pad_token_id": tok.pad if tok.pad >= 0 else None}
    if "tokenizer_config.json" not in written:
        pieces = tok.inv_vocab
        config = {
            "model_max_length": model_max_length,
            "add_bos_token": False,
            "add_eos_token": False,
            "eos_token": pieces.get(tok.eod),
            "clean_up_tokenization_spaces": False,
        }
        if tok.bos is not None:
            config["bos_token"] = pieces.get(tok.bos)
        if tok.pad >= 0:
            config["pad_token"] = pieces.get(tok.pad)
        if tok_file.suffix == ".model":
            config.update(tokenizer_class="LlamaTokenizer", legacy=False)
            if tok.unk_piece is not None:
                config["unk_token"] = tok.unk_piece
        else:
            config["tokenizer_class"] = "PreTrainedTokenizerFast"
        (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        written.append("tokenizer_config.json")
    return written, special


def _hf_tensor_plan(model_cfg: ModelConfig, metadata: dict, where: Path) -> list[tuple]:
    """(entry, layer, dcp key, HF names, HF shapes) in layer order, checked against the checkpoint's index."""
    plan = []
    for entry, layer, _, dcp_key, names in key_map(model_cfg):
        if dcp_key not in metadata:
            raise ConvertError(
                f"{where} has no {dcp_key}; it does not hold a {model_cfg.family} model with the "
                f"architecture in its {checkpoint.META_FILE}."
            )
        shape = tuple(metadata[dcp_key].size)
        if layer is not None:
            if shape[0] != model_cfg.num_layers:
                raise ConvertError(
                    f"{dcp_key} in {where} stacks {shape[0]} layers, its {checkpoint.META_FILE} says "
                    f"{model_cfg.num_layers}."
                )
            shape = shape[1:]
        plan.append((entry, layer, dcp_key, names, hf_shapes(entry, shape, model_cfg)))
    return plan


def _load_slices(directory: Path, metadata: dict, requests: list[tuple[str, int | None]]) -> dict:
    """Read whole tensors (layer None) or one layer's slice of stacked ones from a dist checkpoint."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    state = {}
    for key, layer in requests:
        md = metadata[key]
        shape = tuple(md.size)
        if layer is None:
            state[key] = ShardedTensor.from_rank_offsets(key, torch.empty(shape, dtype=md.properties.dtype))
        else:
            data = torch.empty((1, *shape[1:]), dtype=md.properties.dtype)
            state[key] = ShardedTensor.from_rank_offsets(key, data, (0, layer, shape[0]))
    # A partial read: only this layer's slice is requested, so the check that shards tile each tensor is off.
    loaded = dist_checkpointing.load(state, str(directory), validate_access_integrity=False)
    return {(key, layer): loaded[key] if layer is None else loaded[key][0] for key, layer in requests}


def export_hf(
    ckpt: str | Path,
    out: str | Path,
    *,
    force: bool = False,
    max_shard_size: str = "5GB",
    tokenizer: str | None = None,
    quiet: bool = False,
) -> ExportSummary:
    """The model of a taidtron checkpoint -> an HF directory `out`. Raises ConvertError / CheckpointError naming
    what to change; on any error nothing is left behind (`out` is untouched)."""
    _require_cpu_process()
    from torch.distributed.checkpoint import FileSystemReader
    from transformers import GenerationConfig

    out = Path(out)
    _check_output(out, force)
    directory = checkpoint.resolve_iteration_dir(ckpt)
    meta = checkpoint.verify_checkpoint(directory, contents=True)
    model_cfg = meta.model
    limit = parse_size(max_shard_size)
    tokenizer_source = _tokenizer_source(meta, tokenizer)
    metadata = FileSystemReader(str(directory)).read_metadata().state_dict_metadata
    plan = _hf_tensor_plan(model_cfg, metadata, directory)
    sizes = []
    for _, _, dcp_key, _, shapes in plan:
        itemsize = torch.empty((), dtype=metadata[dcp_key].properties.dtype).element_size()
        sizes.append(sum(int(torch.Size(s).numel()) * itemsize for s in shapes))
    # one dist_checkpointing read per layer (and one for the global tensors)
    groups: list[tuple[int | None, list[int]]] = []
    for i, (_, layer, *_) in enumerate(plan):
        if not groups or groups[-1][0] != layer:
            groups.append((layer, []))
        groups[-1][1].append(i)

    with _atomic_output(out) as tmp:
        writer = ShardWriter(tmp, sizes, limit)
        dtype = None
        with _world_of_one(), _progress(len(plan), f"export {directory.name}", quiet) as bar:
            for layer, indices in groups:
                tensors = _load_slices(directory, metadata, [(plan[i][2], layer) for i in indices])
                for i in indices:
                    entry, _, dcp_key, names, shapes = plan[i]
                    values = to_hf(entry, tensors[(dcp_key, layer)], model_cfg)
                    for name, value, shape in zip(names, values, shapes):
                        assert tuple(value.shape) == tuple(shape), (name, value.shape, shape)
                        dtype = value.dtype
                    writer.add(dict(zip(names, values)))
                    bar.update(1)
                del tensors
        writer.close()

        notes: list[str] = []
        base = _hf_base_config(meta, notes)
        seq_length = meta.seq_length or 4096
        max_positions = int((base or {}).get("max_position_embeddings", seq_length))
        tok_files: list[str] = []
        special: dict = {}
        if tokenizer_source is None:
            notes.append(
                f"{directory} records no tokenizer, so the export has none; pass --tokenizer PATH to ship "
                f"the one the model was trained with."
            )
        elif not tokenizer_source.exists():
            notes.append(
                f"the recorded tokenizer {tokenizer_source} does not exist (any more), so the export has "
                f"none; pass --tokenizer PATH to ship it."
            )
        else:
            tok_files, special = _write_tokenizer(tokenizer_source, tmp, max_positions)
        config = hf_config(model_cfg, dtype=dtype, base=base, max_position_embeddings=seq_length, **special)
        config.save_pretrained(str(tmp))
        GenerationConfig.from_model_config(config).save_pretrained(str(tmp))
    return ExportSummary(
        out=out,
        tensors=len(writer.weight_map),
        shards=len(writer.names),
        bytes=writer.total_bytes,
        dtype=str(dtype).removeprefix("torch."),
        tokenizer_files=tok_files,
        step=meta.step,
        notes=notes,
    )
