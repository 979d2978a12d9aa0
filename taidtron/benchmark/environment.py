"""What a GPU run's numbers were measured with: versions, the device, the peak FLOP/s its MFU divides by, and the
fusions the models will use. The first record of the GPU check:

    python -m taidtron.benchmark.environment --json runs/environment.json

Status `pass` when there is a CUDA device whose peak `taidtron.flops` knows (else MFU cannot be reported), `fail`
otherwise, with the reason in the summary; the facts are reported either way.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys

from taidtron.io import atomic_write_json


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe() -> tuple[str, str, dict]:
    """(status, one-line summary, facts)."""
    import torch

    from taidtron.flops import peak_flops
    from taidtron.models.gpt import fusions, transformer_engine_usable

    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name() if cuda else None
    facts = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "triton": _version("triton"),
        "megatron_core": _version("megatron-core"),
        "transformer_engine": _version("transformer-engine"),
        "device": name,
        "device_count": torch.cuda.device_count() if cuda else 0,
    }
    if cuda:
        props = torch.cuda.get_device_properties(0)
        facts.update(
            nccl=".".join(map(str, torch.cuda.nccl.version())),
            capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
        )
    peak = peak_flops(name)
    facts["peak"] = {"device": peak.device, "bf16_dense_tflops": peak.tflops} if peak else None
    facts["te_usable"] = transformer_engine_usable()
    facts["fusions"] = fusions("cuda" if cuda else "cpu")
    problems = [
        p for p, bad in (("no CUDA device", not cuda), ("device not in taidtron.flops' peak table", not peak)) if bad
    ]
    fused = ",".join(k.removesuffix("_fusion") for k, v in facts["fusions"].items() if v) or "none"
    summary = (
        f"{name or 'no GPU'}, torch {torch.__version__} CUDA {torch.version.cuda} NCCL {facts.get('nccl')} Triton "
        f"{facts['triton']} megatron-core {facts['megatron_core']} TE {facts['transformer_engine']}; peak "
        f"{peak.tflops if peak else '?'} TFLOP/s ({peak.device if peak else 'unknown device'}); fusions {fused}"
    )
    if problems:
        summary += f"; PROBLEMS: {', '.join(problems)}"
    return ("fail" if problems else "pass"), summary, facts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m taidtron.benchmark.environment", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--json", required=True, help="write {status, summary, metrics} here")
    args = parser.parse_args(argv)
    status, summary, facts = describe()
    atomic_write_json(args.json, {"status": status, "summary": summary, "metrics": facts})
    print(f"{status}: {summary}")
    return 0 if status == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())
