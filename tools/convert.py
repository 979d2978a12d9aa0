"""Convert between Hugging Face Llama / Qwen2 checkpoints and taidtron (megatron-core dist) checkpoints.

    python tools/convert.py import --hf HF_DIR --out CKPT_DIR [--force] [--dtype auto|float32|bfloat16|float16]
                                   [--tokenizer PATH]
    python tools/convert.py export --ckpt CKPT_DIR --out HF_DIR [--force] [--max-shard-size 5GB] [--tokenizer PATH]

import: a local HF directory (config.json + model.safetensors, or shards with model.safetensors.index.json) of a
    Llama or Qwen2 model (GQA, qkv bias, tied or untied embeddings, any RoPE base) becomes one taidtron iteration
    directory with no optimizer state. Use it as `teacher.init` or `student.init` at any tp/pp (dist_checkpointing
    reshards on load); the model section to paste into the config is printed at the end. The fingerprint of the
    model's tokenizer (HF_DIR's tokenizer.json, else tokenizer.model; --tokenizer names another) is recorded, so a
    run whose data.tokenizer differs is refused; a folder without one is recorded as `unknown` (said at import and
    in the run's start-up banner).
export: the model of any taidtron checkpoint (the student of a distillation run; a run's checkpoint directory,
    which follows `latest`, or one iteration directory; saved at any tp/pp) becomes an HF directory that
    `transformers.AutoModelForCausalLM.from_pretrained` loads: config.json, generation_config.json, safetensors
    shards with model.safetensors.index.json, and the run's tokenizer files. Vocabulary padding rows are removed.

Both stream tensor by tensor in one CPU process (the GPUs of a GPU node are hidden from it) and write their output
atomically. The conversion itself is `taidtron.hf` (`import_hf`, `export_hf`).
Exit codes: 0 done, 2 bad input (unsupported architecture, missing files, non-empty output without --force).
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="Hugging Face Llama/Qwen2 directory -> taidtron checkpoint")
    imp.add_argument("--hf", required=True, help="local HF model directory (config.json + safetensors)")
    imp.add_argument("--out", required=True, help="taidtron checkpoint directory to create")
    imp.add_argument("--force", action="store_true", help="replace a non-empty --out")
    imp.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="dtype of the stored weights (default: the HF weights' own)",
    )
    imp.add_argument(
        "--tokenizer",
        default=None,
        help="the model's tokenizer (file or folder) to record (default: HF_DIR's tokenizer.json / tokenizer.model)",
    )
    imp.add_argument("--no-progress", action="store_true", help="no progress bar")
    exp = sub.add_parser("export", help="taidtron checkpoint (its student) -> Hugging Face directory")
    exp.add_argument("--ckpt", required=True, help="run checkpoint directory (follows `latest`) or iteration dir")
    exp.add_argument("--out", required=True, help="HF directory to create")
    exp.add_argument("--force", action="store_true", help="replace a non-empty --out")
    exp.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default 5GB)")
    exp.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer file or folder to ship (default: the one the checkpoint was trained with)",
    )
    exp.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if "torch" not in sys.modules:
        # The conversion is CPU work (streamed: about one tensor beyond the process itself, docs/checkpoints.md),
        # often on a GPU node: hide the GPUs from this process, before torch is imported, so megatron-core takes its
        # CPU path.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    from taidtron.checkpoint import CheckpointError
    from taidtron.hf import ConvertError, export_hf, import_hf, model_yaml

    try:
        if args.command == "import":
            meta = import_hf(
                args.hf, args.out, force=args.force, dtype=args.dtype, quiet=args.no_progress, tokenizer=args.tokenizer
            )
            print(
                f"wrote {args.out} ({meta.model.family}, {meta.model.num_layers} layers, {meta.params_dtype}). "
                f"Use it as teacher or student; the model section for the config:\n"
            )
            print("\n".join("  " + line for line in model_yaml(meta.model, str(args.out)).splitlines()))
            if meta.tokenizer.known:
                print(f"\ntokenizer {meta.tokenizer.path} (fingerprint {meta.tokenizer.fingerprint[:12]}) recorded")
            else:
                print(
                    f"convert: note: {args.hf} holds no tokenizer.json or tokenizer.model, so the tokenizer is "
                    f"recorded as unknown and runs cannot check data.tokenizer against it; pass --tokenizer PATH "
                    f"to record the model's own.",
                    file=sys.stderr,
                )
        else:
            summary = export_hf(
                args.ckpt,
                args.out,
                force=args.force,
                max_shard_size=args.max_shard_size,
                tokenizer=args.tokenizer,
                quiet=args.no_progress,
            )
            print(
                f"wrote {summary.out}: {summary.tensors} tensors in {summary.shards} shard(s), "
                f"{summary.bytes / 1e6:.1f} MB {summary.dtype}, tokenizer files: "
                f"{', '.join(summary.tokenizer_files) or 'none'}"
            )
            for note in summary.notes:
                print(f"convert: note: {note}", file=sys.stderr)
    except (ConvertError, CheckpointError) as exc:
        print(f"convert: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
