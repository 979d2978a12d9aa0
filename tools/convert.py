"""Convert between Hugging Face Llama / Qwen2 checkpoints and taidtron (megatron-core dist) checkpoints.

    python tools/convert.py import --hf HF_DIR --out CKPT_DIR [--force]
    python tools/convert.py export --ckpt CKPT_DIR --out HF_DIR [--force]

import: a local HF directory (config.json + model.safetensors, or shards with model.safetensors.index.json) of a
    Llama or Qwen2 model (GQA, qkv bias, tied or untied embeddings, any RoPE base) becomes one taidtron iteration
    directory with no optimizer state. Use it as `teacher.init` or `student.init` at any tp/pp (dist_checkpointing
    reshards on load); the model section to paste into the config is printed at the end.
export: the student of any taidtron checkpoint (a run's checkpoint directory, which follows `latest`, or one
    iteration directory; saved at any tp/pp) becomes an HF directory that
    `transformers.AutoModelForCausalLM.from_pretrained` loads: config.json, generation_config.json, safetensors
    shards with model.safetensors.index.json, and the run's tokenizer files. Vocabulary padding rows are removed.

Both stream tensor by tensor (import: one HF tensor at a time into the model; export: one layer at a time into
shards of at most --max-shard-size), run in one CPU process (a gloo world of one, tp=pp=1), and write their output
atomically (a hidden temporary directory renamed at the end). The key map is `taidtron/hf.py`.
Exit codes: 0 done, 2 bad input (unsupported architecture, missing files, non-empty output without --force).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

# Conversion is memory-bound CPU work; hiding GPUs keeps megatron on its local (non-TE) layer spec and lets the CPU
# shim install. Must happen before torch is imported.
os.environ["CUDA_VISIBLE_DEVICES"] = ""  # also inside GPU jobs, where the scheduler sets it
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from taidtron.hf import (  # noqa: E402,F401  (model_config_from_hf is part of this tool's interface)
    UnsupportedModelError,
    expected_hf_keys,
    hf_config,
    hf_shapes,
    key_map,
    model_config_from_hf,
    model_yaml,
    read_hf_config,
    to_hf,
    to_megatron,
)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "added_tokens.json")
# Old checkpoints carry RoPE caches as tensors; they are recomputed from the base, never weights.
IGNORED_HF_SUFFIXES = (".rotary_emb.inv_freq",)


class ConvertError(ValueError):
    """Bad input to the converter: the message says what to change."""


# ----------------------------------------------------------------------------------------------------------
# shared


def _prepare_output(out: Path, force: bool) -> Path:
    """Refuse a non-empty output unless --force; return the hidden temporary sibling to write into."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ConvertError(f"output {out} exists and is not empty; choose another directory or pass --force to "
                           f"replace it.")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.with_name(f".tmp_{out.name}")


def _init_single_process():
    """A gloo world of one with megatron's parallel state at tp=pp=1 (what build_gpt and dist_checkpointing need),
    a world of one even inside a SLURM allocation."""
    from taidtron.config import ParallelConfig
    from taidtron.distributed import LaunchEnv, init_distributed, seed_everything

    seed_everything(0, init_distributed(ParallelConfig(), launch=LaunchEnv.single()))


def _close_single_process() -> None:
    import torch.distributed as dist

    from taidtron.distributed import destroy_distributed

    if dist.is_initialized():
        destroy_distributed()


def _progress(total: int, desc: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="tensor", dynamic_ncols=True, disable=quiet)


# ----------------------------------------------------------------------------------------------------------
# import: HF -> taidtron


class _SafetensorsReader:
    """Tensors of an HF directory by name, from one file or from shards listed in model.safetensors.index.json.
    Files are memory-mapped by safetensors and read one tensor at a time."""

    def __init__(self, hf_dir: Path):
        from safetensors import safe_open

        self._safe_open = safe_open
        index = hf_dir / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as exc:
                raise ConvertError(f"{index} is not a valid safetensors index ({exc}).") from None
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not (hf_dir / f).is_file()]
            if missing:
                raise ConvertError(f"{hf_dir} is missing shard(s) {', '.join(missing)} listed in {index.name}.")
            self.location = {name: hf_dir / file for name, file in weight_map.items()}
        else:
            files = sorted(hf_dir.glob("*.safetensors"))
            if not files:
                other = sorted(p.name for p in hf_dir.glob("*.bin")) + sorted(p.name for p in hf_dir.glob("*.pth"))
                hint = (f" It has {', '.join(other[:3])}: re-save the model with safetensors "
                        f"(model.save_pretrained(dir, safe_serialization=True))." if other else "")
                raise ConvertError(f"{hf_dir} holds no *.safetensors weights.{hint}")
            self.location = {}
            for file in files:
                with safe_open(str(file), framework="pt") as f:
                    for name in f.keys():
                        self.location[name] = file
        self._handles: dict[Path, object] = {}

    def _handle(self, file: Path):
        if file not in self._handles:
            self._handles[file] = self._safe_open(str(file), framework="pt")
        return self._handles[file]

    def dtype(self, name: str) -> str:
        return self._handle(self.location[name]).get_slice(name).get_dtype()

    def get(self, name: str) -> torch.Tensor:
        return self._handle(self.location[name]).get_tensor(name)


_SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def _check_hf_keys(reader: _SafetensorsReader, model_cfg, hf_dir: Path) -> None:
    """Every tensor the key map needs is there, and nothing unknown is left over (STYLE §4.11)."""
    expected = expected_hf_keys(model_cfg)
    present = {k for k in reader.location if not k.endswith(IGNORED_HF_SUFFIXES)}
    missing = sorted(expected - present)
    if missing:
        raise ConvertError(f"{hf_dir} lacks {len(missing)} tensor(s) its config.json implies, e.g. "
                           f"{', '.join(missing[:4])}; the weights do not match the config.")
    leftover = present - expected
    if model_cfg.tie_embeddings:
        leftover.discard("lm_head.weight")  # some tied checkpoints store the shared matrix twice
    if leftover:
        raise ConvertError(f"{hf_dir} has {len(leftover)} tensor(s) a plain {model_cfg.family} model does not have,"
                           f" e.g. {', '.join(sorted(leftover)[:4])}; they would be dropped, so the conversion "
                           f"stops. Only Llama / Qwen2 decoders without extra modules are supported.")


def import_hf(hf_dir: str | Path, out: str | Path, *, force: bool = False, dtype: str = "auto",
              quiet: bool = False) -> dict:
    """HF directory -> taidtron iteration directory. Returns the checkpoint metadata."""
    import hashlib
    from dataclasses import asdict

    hf_dir, out = Path(hf_dir), Path(out)
    if not hf_dir.is_dir():
        raise ConvertError(f"--hf {hf_dir} is not a directory; pass a local Hugging Face model folder "
                           f"(config.json + *.safetensors).")
    if not (hf_dir / "config.json").is_file():
        raise ConvertError(f"{hf_dir} has no config.json; pass a Hugging Face model folder.")
    hf = read_hf_config(hf_dir)
    model_cfg = model_config_from_hf(hf)  # UnsupportedModelError names what does not fit
    tmp = _prepare_output(out, force)
    reader = _SafetensorsReader(hf_dir)
    _check_hf_keys(reader, model_cfg, hf_dir)

    entries = key_map(model_cfg)
    source_dtypes = {reader.dtype(name) for *_, names in entries for name in names}
    if dtype == "auto":
        if len(source_dtypes) != 1 or next(iter(source_dtypes)) not in _SAFETENSORS_DTYPES:
            raise ConvertError(f"{hf_dir} mixes or uses unsupported weight dtypes {sorted(source_dtypes)}; pass "
                               f"--dtype float32 or bfloat16.")
        params_dtype = _SAFETENSORS_DTYPES[next(iter(source_dtypes))]
    else:
        params_dtype = getattr(torch, dtype)

    # megatron is imported only now: every check above fails fast, before seconds of imports.
    from taidtron import checkpoint
    from taidtron.config import ParallelConfig
    from taidtron.models import build_gpt

    padded_vocab = -(-model_cfg.vocab_size // 128) * 128  # any tp pads further at load time (zero rows)
    _init_single_process()
    try:
        model = build_gpt(model_cfg, ParallelConfig(), padded_vocab_size=padded_vocab,
                          max_seq_length=int(hf.get("max_position_embeddings", 4096)), pp_rank=0,
                          params_dtype=params_dtype, device=torch.device("cpu"), initialize=False)
        params = dict(model.named_parameters())
        targets = {megatron for _, _, megatron, _, _ in entries}
        assert set(params) == targets, f"key map out of date: {sorted(set(params) ^ targets)}"
        digest = hashlib.sha256()  # content id: the source weights, so re-importing the same model is recognised
        with torch.no_grad(), _progress(len(entries), f"import {hf_dir.name}", quiet) as bar:
            for entry, _, megatron, _, names in entries:
                hf_tensors = [reader.get(name) for name in names]
                for name, tensor in zip(names, hf_tensors):
                    digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
                    digest.update(tensor.contiguous().view(torch.uint8).numpy())
                value = to_megatron(entry, hf_tensors, model_cfg, padded_vocab)
                param = params[megatron]
                if tuple(value.shape) != tuple(param.shape):
                    raise ConvertError(f"{', '.join(names)} give {megatron} the shape {tuple(value.shape)}, the "
                                       f"config implies {tuple(param.shape)}; config.json and weights disagree.")
                param.copy_(value)
                del hf_tensors, value
                bar.update(1)
        meta = {
            "kind": "hf_import",
            "model": asdict(model_cfg),
            "padded_vocab_size": padded_vocab,
            "params_dtype": str(params_dtype).removeprefix("torch."),
            "hf_config": hf,
            "source": {"path": str(hf_dir.resolve()), "model_type": hf.get("model_type")},
            "content_id": "sha256:" + digest.hexdigest(),
        }
        if tmp.exists():
            shutil.rmtree(tmp)
        checkpoint.save_model(tmp, model=model, meta=meta)
        checkpoint.replace_dir(tmp, out)
    finally:
        _close_single_process()
    return checkpoint.read_meta(out)


# ----------------------------------------------------------------------------------------------------------
# export: taidtron -> HF


def _parse_size(text: str) -> int:
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}
    t = text.strip().upper()
    for unit, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if t.endswith(unit):
            return int(float(t[: -len(unit)]) * factor)
    return int(t)


def _find_hf_base(meta: dict) -> dict | None:
    """An original HF config to take the fields taidtron does not model from: the checkpoint's own (an import) or
    that of the checkpoint the student was initialised from."""
    if meta.get("hf_config"):
        return meta["hf_config"]
    init = ((meta.get("config") or {}).get("student") or {}).get("init")
    if init:
        from taidtron import checkpoint

        try:
            return checkpoint.read_meta(init).get("hf_config")
        except checkpoint.CheckpointError:
            return None
    return None


def _tokenizer_source(meta: dict, override: str | None) -> Path | None:
    if override:
        return Path(override)
    tok = ((meta.get("config") or {}).get("data") or {}).get("tokenizer")
    if tok:
        path = Path(tok)
        return path if path.is_absolute() or path.exists() else REPO / path
    source = (meta.get("source") or {}).get("path")  # an import: the HF folder it came from
    return Path(source) if source else None


def _write_tokenizer(source: Path | None, tmp: Path, model_max_length: int) -> tuple[list[str], dict]:
    """Copy the run's tokenizer; returns (files written, special ids for the configs)."""
    if source is None:
        return [], {}
    if not source.exists():
        print(f"warning: tokenizer {source} not found; the export has no tokenizer files (pass --tokenizer)",
              file=sys.stderr)
        return [], {}
    written: list[str] = []
    if source.is_dir():
        for name in TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, tmp / name)
                written.append(name)
        tok_file = next((source / n for n in ("tokenizer.json", "tokenizer.model") if (source / n).is_file()), None)
    else:
        tok_file = source
        target = "tokenizer.json" if source.suffix == ".json" else "tokenizer.model"
        shutil.copy2(source, tmp / target)
        written.append(target)
        for sibling in ("tokenizer_config.json", "special_tokens_map.json"):
            if source.suffix == ".json" and (source.parent / sibling).is_file():
                shutil.copy2(source.parent / sibling, tmp / sibling)
                written.append(sibling)
    special: dict = {}
    if tok_file is None:
        return written, special
    from taidtron.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tok_file)
    special = {"eos_token_id": tok.eod, "bos_token_id": tok.bos, "pad_token_id": tok.pad if tok.pad >= 0 else None}
    if "tokenizer_config.json" not in written:
        pieces = tok.inv_vocab
        config = {"model_max_length": model_max_length, "add_bos_token": False, "add_eos_token": False,
                  "eos_token": pieces.get(tok.eod), "clean_up_tokenization_spaces": False}
        if tok.bos is not None:
            config["bos_token"] = pieces.get(tok.bos)
        if tok.pad >= 0:
            config["pad_token"] = pieces.get(tok.pad)
        if tok_file.suffix == ".model":
            config.update(tokenizer_class="LlamaTokenizer", legacy=False)
            unk = getattr(getattr(tok, "_backend", None), "sp", None)
            if unk is not None and unk.unk_id() >= 0:
                config["unk_token"] = unk.IdToPiece(unk.unk_id())
        else:
            config["tokenizer_class"] = "PreTrainedTokenizerFast"
        (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        written.append("tokenizer_config.json")
    return written, special


def _hf_tensor_plan(model_cfg, metadata) -> list[tuple]:
    """(entry, layer, dcp key, HF names, HF shapes) in layer order, checked against the checkpoint's index."""
    plan = []
    for entry, layer, _, dcp_key, names in key_map(model_cfg):
        if dcp_key not in metadata:
            raise ConvertError(f"the checkpoint has no {dcp_key}; it does not hold a {model_cfg.family} model with "
                               f"the architecture in its taidtron.json.")
        shape = tuple(metadata[dcp_key].size)
        if layer is not None:
            if shape[0] != model_cfg.num_layers:
                raise ConvertError(f"{dcp_key} stacks {shape[0]} layers, taidtron.json says "
                                   f"{model_cfg.num_layers}.")
            shape = shape[1:]
        plan.append((entry, layer, dcp_key, names, hf_shapes(entry, shape, model_cfg)))
    return plan


def _load_slices(directory: Path, metadata, requests: list[tuple[str, int | None]]) -> dict:
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


def export_hf(ckpt: str | Path, out: str | Path, *, force: bool = False, max_shard_size: str = "5GB",
              tokenizer: str | None = None, quiet: bool = False) -> dict:
    """The student of a taidtron checkpoint -> an HF directory. Returns a summary."""
    from dataclasses import fields

    from safetensors.torch import save_file
    from torch.distributed.checkpoint import FileSystemReader
    from transformers import GenerationConfig

    from taidtron import checkpoint
    from taidtron.config import ModelConfig

    directory = checkpoint.resolve_iteration_dir(ckpt)
    meta = checkpoint.verify_checkpoint(directory)
    if not meta.get("model"):
        raise ConvertError(f"{directory / checkpoint.META_FILE} records no model architecture; it was not written "
                           f"by taidtron.")
    known = {f.name for f in fields(ModelConfig)}
    model_cfg = ModelConfig(**{k: v for k, v in meta["model"].items() if k in known})
    out = Path(out)
    tmp = _prepare_output(out, force)
    limit = _parse_size(max_shard_size)
    metadata = FileSystemReader(str(directory)).read_metadata().state_dict_metadata
    plan = _hf_tensor_plan(model_cfg, metadata)

    # Shards are planned from the index (shapes, dtypes) before any tensor is read, so their names are final.
    shard_of: list[int] = []
    sizes: list[int] = [0]
    for entry, _, dcp_key, names, shapes in plan:
        itemsize = torch.empty((), dtype=metadata[dcp_key].properties.dtype).element_size()
        nbytes = sum(int(torch.Size(s).numel()) * itemsize for s in shapes)
        if sizes[-1] and sizes[-1] + nbytes > limit:
            sizes.append(0)
        sizes[-1] += nbytes
        shard_of.append(len(sizes) - 1)
    shard_names = [f"model-{i + 1:05d}-of-{len(sizes):05d}.safetensors" for i in range(len(sizes))]

    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    _init_single_process()
    try:
        weight_map: dict[str, str] = {}
        pending: dict[str, torch.Tensor] = {}
        current = 0
        dtype = None
        groups: list[tuple[int | None, list[int]]] = []  # one dist_checkpointing read per layer (and the globals)
        for i, (_, layer, *_) in enumerate(plan):
            if not groups or groups[-1][0] != layer:
                groups.append((layer, []))
            groups[-1][1].append(i)
        with _progress(len(plan), f"export {directory.name}", quiet) as bar:
            for layer, indices in groups:
                tensors = _load_slices(directory, metadata, [(plan[i][2], layer) for i in indices])
                for i in indices:
                    entry, _, dcp_key, names, shapes = plan[i]
                    if shard_of[i] != current:
                        save_file(pending, str(tmp / shard_names[current]), metadata={"format": "pt"})
                        pending, current = {}, shard_of[i]
                    for name, value, shape in zip(names, to_hf(entry, tensors[(dcp_key, layer)], model_cfg),
                                                  shapes):
                        assert tuple(value.shape) == tuple(shape), (name, value.shape, shape)
                        pending[name] = value
                        weight_map[name] = shard_names[current]
                        dtype = value.dtype
                    bar.update(1)
                del tensors
        save_file(pending, str(tmp / shard_names[current]), metadata={"format": "pt"})
        del pending
    finally:
        _close_single_process()
    index = {"metadata": {"total_size": sum(sizes)}, "weight_map": dict(sorted(weight_map.items()))}
    (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")

    base = _find_hf_base(meta)
    seq_length = ((meta.get("config") or {}).get("data") or {}).get("seq_length", 4096)
    tok_files, special = _write_tokenizer(_tokenizer_source(meta, tokenizer), tmp,
                                          int((base or {}).get("max_position_embeddings", seq_length)))
    config = hf_config(model_cfg, dtype=dtype, base=base, max_position_embeddings=seq_length, **special)
    config.save_pretrained(str(tmp))
    GenerationConfig.from_model_config(config).save_pretrained(str(tmp))
    checkpoint.replace_dir(tmp, out)
    return {"out": str(out), "tensors": len(weight_map), "shards": len(shard_names), "bytes": sum(sizes),
            "dtype": str(dtype), "tokenizer_files": tok_files, "step": (meta.get("trainer") or {}).get("step")}


# ----------------------------------------------------------------------------------------------------------
# CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="Hugging Face Llama/Qwen2 directory -> taidtron checkpoint")
    imp.add_argument("--hf", required=True, help="local HF model directory (config.json + safetensors)")
    imp.add_argument("--out", required=True, help="taidtron checkpoint directory to create")
    imp.add_argument("--force", action="store_true", help="replace a non-empty --out")
    imp.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                     help="dtype of the stored weights (default: the HF weights' own)")
    imp.add_argument("--no-progress", action="store_true", help="no progress bar")
    exp = sub.add_parser("export", help="taidtron checkpoint (its student) -> Hugging Face directory")
    exp.add_argument("--ckpt", required=True, help="run checkpoint directory (follows `latest`) or iteration dir")
    exp.add_argument("--out", required=True, help="HF directory to create")
    exp.add_argument("--force", action="store_true", help="replace a non-empty --out")
    exp.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default 5GB)")
    exp.add_argument("--tokenizer", default=None,
                     help="tokenizer file or folder to ship (default: the run's data.tokenizer)")
    exp.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from taidtron.checkpoint import CheckpointError

    args = parse_args(argv)
    try:
        if args.command == "import":
            meta = import_hf(args.hf, args.out, force=args.force, dtype=args.dtype, quiet=args.no_progress)
            print(f"wrote {args.out} ({meta['model']['family']}, {meta['model']['num_layers']} layers, "
                  f"{meta['params_dtype']}). Use it as teacher or student; the model section for the config:\n")
            print("\n".join("  " + line for line in model_yaml(_model(meta), str(args.out)).splitlines()))
        else:
            summary = export_hf(args.ckpt, args.out, force=args.force, max_shard_size=args.max_shard_size,
                                tokenizer=args.tokenizer, quiet=args.no_progress)
            print(f"wrote {summary['out']}: {summary['tensors']} tensors in {summary['shards']} shard(s), "
                  f"{summary['bytes'] / 1e6:.1f} MB {summary['dtype']}, tokenizer files: "
                  f"{', '.join(summary['tokenizer_files']) or 'none'}")
    except (ConvertError, UnsupportedModelError, CheckpointError, FileNotFoundError) as exc:
        print(f"convert: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _model(meta: dict):
    from dataclasses import fields

    from taidtron.config import ModelConfig

    known = {f.name for f in fields(ModelConfig)}
    return ModelConfig(**{k: v for k, v in meta["model"].items() if k in known})


if __name__ == "__main__":
    sys.exit(main())
