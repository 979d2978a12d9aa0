"""`tools/convert.py import` and `export` in bounded memory: run through `tools/bench_convert_memory.py` (the
benchmark's own command, on models it generates with transformers + safetensors), the peak resident memory of
each command stays flat while the model grows eightfold past many shards, and the round trip stays bit-exact."""

from __future__ import annotations

import json

from tests.support import REPO_ROOT, run_cli

BENCH = REPO_ROOT / "tools" / "bench_convert_memory.py"
FLAT = 0.25
"""Largest rise of a peak per byte of added weights. An import that holds the model (before streaming) rises by
1 or more (its weights, plus the shard pages it kept mapped); the streamed one by what megatron-core's model
structure and the checkpoint's index add per layer."""


def test_import_and_export_peaks_stay_flat_as_the_model_grows(tmp_path):
    out = tmp_path / "memory.json"
    run_cli(
        str(BENCH),
        *("--layers", "2", "16", "--hidden", "512", "--vocab", "2048", "--shard-size", "8MB", "--json", str(out)),
        timeout=1800,
    )
    result = json.loads(out.read_text())
    small, large = result["rows"]
    assert large["weights_bytes"] > 8 * large["largest_shard_bytes"] and large["hf_shards"] > 8, large
    assert large["weights_bytes"] > 6 * small["weights_bytes"], result
    assert small["round_trip_identical"] and large["round_trip_identical"], result
    assert result["import_growth"] < FLAT, result
    assert result["export_growth"] < FLAT, result
