"""How much memory do `tools/convert.py import` and `export` need as the model grows? Peak resident memory of each
command against the size of the model it converts.

    python tools/bench_convert_memory.py                                  # 4, 16, 64 layers, Qwen2-size vocabulary
    python tools/bench_convert_memory.py --layers 2 16 --hidden 256 --vocab 1024 --shard-size 4MB --json runs/x.json

For each number of layers (`--layers`) a random Llama (GQA, untied, bf16) of width `--hidden` and vocabulary
`--vocab` is written with transformers + safetensors (`taidtron.hf.synthetic`: transformers' names and config.json,
shards of at most `--shard-size`), then converted by the real commands, each in its own process:

    import   python tools/convert.py import --hf MODEL --out CKPT --no-progress
    export   python tools/convert.py export --ckpt CKPT --out EXPORT --max-shard-size <--shard-size> --no-progress

and the export is compared with the model tensor by tensor (`torch.equal`, one pair in memory at a time). The peak
of a command is the kernel's ru_maxrss of its process (wait4). Linux counts a child's memory from before its exec,
which is its parent's, in that figure, so everything heavy (writing models, comparing) runs in child processes too
and this process imports neither torch nor taidtron's torch-side modules: what it adds is its own ~20 MB.

A memory bounded by the largest tensor and not by the model shows as a flat column; `growth` is the rise of each
column from the smallest model to the largest divided by the rise of the weights (0: flat, 1: the whole model in
memory). `--convert` measures another checkout's tools/convert.py (with that checkout's taidtron), e.g. an earlier
commit's, for the figures before a change. Models and outputs live in a temporary directory, removed per size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from taidtron.io import atomic_write_json  # no torch: this process stays small (see above)
from taidtron.lifetime import die_with_parent

REPO = Path(__file__).resolve().parents[2]
MIB = 2**20


def run(command: list[str], env: dict | None = None) -> tuple[int, float, str]:
    """Run `command`: its peak resident set size in bytes, its wall time and its stdout. Fails on a non-zero exit.
    The command ends with this process (`die_with_parent`)."""
    parent = os.getpid()
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        start = time.perf_counter()
        proc = subprocess.Popen(
            command, env=env, stdout=stdout, stderr=stderr, text=True, preexec_fn=lambda: die_with_parent(parent)
        )
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own rusage, which Popen.wait does not give
        seconds = time.perf_counter() - start
        proc.wait()  # already reaped: Popen only records that the process is gone
        code = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        if code != 0:
            raise SystemExit(f"{' '.join(command)} exited {code}:\n{stderr.read()[-3000:]}")
        return usage.ru_maxrss * 1024, seconds, stdout.read()  # ru_maxrss is in KiB on Linux


def generate(
    directory: Path, layers: int, hidden: int, ffn: int, heads: int, kv_heads: int, vocab: int, shard_size: str
) -> dict:
    """Child process: write the random model; its weight bytes and shards."""
    import torch
    from transformers import LlamaConfig

    from taidtron.hf.shards import parse_size
    from taidtron.hf.synthetic import write_random_model

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        dtype=torch.bfloat16,
    )
    weights = write_random_model(directory, config, max_shard_bytes=parse_size(shard_size), dtype=torch.bfloat16)
    shards = sorted(directory.glob("*.safetensors"))
    largest_tensor = max(config.vocab_size * hidden, 2 * ffn * hidden) * 2  # the embedding or fc1 ([gate; up]), bf16
    return {
        "weights_bytes": weights,
        "hf_shards": len(shards),
        "largest_shard_bytes": max(p.stat().st_size for p in shards),
        "largest_tensor_bytes": largest_tensor,
    }


def same_tensors(model_dir: Path, export_dir: Path) -> bool:
    """Child process: every tensor of the export equals the model's (names, dtypes, values), one pair at a time."""
    import torch
    from safetensors import safe_open

    def index(directory: Path) -> dict[str, Path]:
        names = json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"]
        return {name: directory / file for name, file in names.items()}

    before, after = index(model_dir), index(export_dir)
    if before.keys() != after.keys():
        return False
    for name in before:
        with safe_open(str(before[name]), framework="pt") as a, safe_open(str(after[name]), framework="pt") as b:
            x, y = a.get_tensor(name), b.get_tensor(name)
            if x.dtype != y.dtype or not torch.equal(x, y):
                return False
    return True


def measure(layers: int, args: argparse.Namespace, work: Path) -> dict:
    model_dir, ckpt, export = work / "hf", work / "ckpt", work / "export"
    me = [sys.executable, "-m", __name__]  # this module's own child-process entries (--_generate, --_compare)
    ffn = args.ffn or 4 * args.hidden
    heads = args.heads or args.hidden // 64
    spec = [str(layers), str(args.hidden), str(ffn), str(heads), str(args.kv_heads or max(1, heads // 4))]
    spec += [str(args.vocab), args.shard_size]
    _, _, out = run([*me, "--_generate", str(model_dir), *spec])
    row = {"layers": layers, **json.loads(out)}
    env = dict(os.environ)
    if args.convert is not None:
        env["PYTHONPATH"] = str(args.convert.resolve().parents[1])
    convert = [sys.executable, str(args.convert or REPO / "tools" / "convert.py")]
    rss, seconds, _ = run([*convert, "import", "--hf", str(model_dir), "--out", str(ckpt), "--no-progress"], env)
    row.update(import_peak_rss_bytes=rss, import_seconds=round(seconds, 1))
    rss, seconds, _ = run(
        [*convert, "export", "--ckpt", str(ckpt), "--out", str(export), "--max-shard-size", args.shard_size]
        + ["--no-progress"],
        env,
    )
    row.update(export_peak_rss_bytes=rss, export_seconds=round(seconds, 1))
    _, _, out = run([*me, "--_compare", str(model_dir), str(export)])
    row["round_trip_identical"] = json.loads(out)
    return row


def growth(rows: list[dict], column: str) -> float:
    first, last = rows[0], rows[-1]
    return (last[column] - first[column]) / max(1, last["weights_bytes"] - first["weights_bytes"])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_generate"]:
        directory, *sizes, shard_size = argv[1:]
        print(json.dumps(generate(Path(directory), *map(int, sizes), shard_size)))
        return 0
    if argv[:1] == ["--_compare"]:
        print(json.dumps(same_tensors(Path(argv[1]), Path(argv[2]))))
        return 0
    parser = argparse.ArgumentParser(
        prog="bench_convert_memory.py",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--layers", type=int, nargs="+", default=[4, 16, 64], help="model sizes, in layers")
    parser.add_argument("--hidden", type=int, default=1024, help="model width")
    parser.add_argument("--ffn", type=int, default=None, help="MLP width (default 4 x hidden)")
    parser.add_argument("--heads", type=int, default=None, help="attention heads (default: of 64 dims each)")
    parser.add_argument("--kv-heads", type=int, default=None, help="key/value heads (default: heads / 4)")
    parser.add_argument("--vocab", type=int, default=152064, help="vocabulary (default Qwen2's)")
    parser.add_argument("--shard-size", default="512MB", help="largest safetensors shard, of the model and the export")
    parser.add_argument("--convert", type=Path, default=None, help="another checkout's tools/convert.py to measure")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if len(args.layers) < 2 or sorted(args.layers) != args.layers:
        parser.error("--layers needs at least two sizes, smallest first")

    rows = []
    print(
        f"{'layers':>6} {'weights MiB':>11} {'shards':>6} {'largest shard MiB':>17} {'largest tensor MiB':>18} "
        f"{'import peak MiB':>15} {'export peak MiB':>15} {'round trip':>10}",
        flush=True,
    )
    for layers in args.layers:
        with tempfile.TemporaryDirectory(prefix="bench_convert_") as tmp:
            row = measure(layers, args, Path(tmp))
        rows.append(row)
        print(
            f"{layers:>6} {row['weights_bytes'] / MIB:>11.1f} {row['hf_shards']:>6} "
            f"{row['largest_shard_bytes'] / MIB:>17.1f} {row['largest_tensor_bytes'] / MIB:>18.1f} "
            f"{row['import_peak_rss_bytes'] / MIB:>15.1f} {row['export_peak_rss_bytes'] / MIB:>15.1f} "
            f"{'identical' if row['round_trip_identical'] else 'DIFFERS':>10}",
            flush=True,
        )
    summary = {
        "import_growth": growth(rows, "import_peak_rss_bytes"),
        "export_growth": growth(rows, "export_peak_rss_bytes"),
    }
    print(
        f"growth of the peak per byte of weights, {args.layers[0]} -> {args.layers[-1]} layers: "
        f"import {summary['import_growth']:.3f}, export {summary['export_growth']:.3f} (0: flat, 1: the whole model)"
    )
    if args.json is not None:
        atomic_write_json(args.json, {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows, **summary})
    return 0 if all(row["round_trip_identical"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
