"""tools/bench_cache.py's storage measurement runs on CPU and writes what docs/teacher_cache.md quotes: bytes per
token as shard files hold them, at each K, for the smoke and Qwen2 vocabularies (the timings and errors of its other
measurements are the tool's to report, not asserted here)."""

from __future__ import annotations

import json

from tests.support import REPO_ROOT, run_cli


def test_bytes_per_token_of_each_k_against_fp16_logits(tmp_path):
    out = tmp_path / "bytes.json"
    run_cli(str(REPO_ROOT / "tools" / "bench_cache.py"), "bytes", "--json", str(out), timeout=600)
    rows = {(r["vocab"], r["top_k"]): r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {(v, k) for v in (1024, 152_064) for k in (8, 32, 128, "full")}
    for (vocab, top_k), r in rows.items():
        records = r["record_bytes_per_token"]
        assert records == (2 * vocab if top_k == "full" else top_k * (2 + r["id_bytes"]) + 4)
        assert records <= r["file_bytes_per_token"] < records + 8  # + header and per-sample digest
    assert rows[(152_064, 32)]["id_bytes"] == 3 and rows[(1024, 32)]["id_bytes"] == 2
    assert rows[(152_064, 32)]["tb_for_50_3b_tokens"] == rows[(152_064, 32)]["file_bytes_per_token"] * 50.3e9 / 1e12
