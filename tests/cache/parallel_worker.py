"""torchrun worker of test_parallel.py: for each layout, in one world (megatron's groups rebuilt per layout, the
torch.distributed world kept), write a full-vocabulary float32 teacher cache at that layout, then train the tiny run
twice from the same seed: with the teacher online and from the cache.

    parallel_worker.py OUT_DIR RUN_ARGS_JSON LAYOUTS_JSON

RUN_ARGS_JSON: the run's command line (`--config FILE k=v ...`); LAYOUTS_JSON: {name: [k=v ...]}. Writes
OUT_DIR/<name>/{cache, online, cached} (the last two are run directories: metrics.jsonl, eval.jsonl, checkpoints)
and reports {name: "done"} per layout.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from taidtron.cache import CacheOptions, write_cache
from taidtron.config import load_config
from taidtron.distributed import destroy_distributed, destroy_model_parallel, init_distributed, seed_everything
from taidtron.loop import fit
from tests.cache.conftest import SHARD_SAMPLES
from tests.support import report


def main() -> None:
    out_dir, run_args, layouts = Path(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
    config, overrides = run_args[1], run_args[2:]
    for name, layout in layouts.items():
        where = out_dir / name
        cfg = load_config(config, [*overrides, *layout])
        ctx = init_distributed(cfg.parallel)
        cfg.validate_layout(ctx.world_size)
        seed_everything(cfg.seed, ctx)
        options = CacheOptions(
            out=str(where / "cache"), top_k=None, log_prob_dtype="float32", shard_samples=SHARD_SAMPLES
        )
        write_cache(cfg, ctx, options)
        for run, extra in (("online", []), ("cached", [f"teacher.cache={where / 'cache'}"])):
            cfg = load_config(config, [*overrides, *layout, *extra, f"logging.run_dir={where / run}"])
            seed_everything(cfg.seed, ctx)  # the same random student in both runs
            assert fit(cfg, ctx) == 0
        destroy_model_parallel()
        report(**{name: "done"})
    destroy_distributed()


if __name__ == "__main__":
    main()
