"""Entry point: `python -m taidtron.train --config configs/smoke.yaml [section.key=value ...]`.

Parse, build, train, close. The loop lives in `taidtron.trainer`; launchers (torchrun, srun, deepspeed) only set
the rank environment that `taidtron.distributed` reads.
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from taidtron.config import config_help

    parser = argparse.ArgumentParser(
        prog="taidtron-train",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Distil a teacher LM into a student with TAID on megatron-core (TP/PP/DP).",
        epilog="overrides: any config key as section.key=value, e.g. optim.lr=3e-4 parallel.tp=2\n"
               "exit codes: 0 done, 75 preempted by SIGUSR1/SIGTERM after saving a checkpoint (requeue to resume),"
               "\n            2 bad input: configuration, checkpoint, tokenizer or data; a diverged run; a failed save"
               "\n              (the message says what to change)"
               "\n\nconfig keys (defaults):" + config_help(),
    )
    parser.add_argument("--config", help="YAML experiment file (see configs/)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, applied after --config")
    args, unknown = parser.parse_known_args(argv)
    # `--optim.lr=3e-4` style is accepted too, as torchtitan users type it.
    bad = [u for u in unknown if not (u.startswith("--") and "=" in u)]
    if bad:
        parser.error(f"unrecognised arguments {bad}; overrides look like section.key=value")
    args.overrides = args.overrides + [u[2:] for u in unknown]
    return args


def main(argv: list[str] | None = None) -> int:
    from taidtron.preemption import StopSignal

    # First thing, before torch is imported: a SIGUSR1/SIGTERM during start-up must not kill the rank.
    stop = StopSignal()
    from taidtron.config import ConfigError, load_config

    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"taidtron: configuration error: {exc}", file=sys.stderr)
        return 2

    from taidtron.distributed import destroy_distributed, init_distributed, seed_everything
    from taidtron.trainer import fit

    try:
        ctx = init_distributed(cfg.parallel)
        cfg.validate_layout(ctx.world_size)
        seed_everything(cfg.seed, ctx)
        return fit(cfg, ctx, stop)
    except ValueError as exc:  # ConfigError, CheckpointError, tokenizer/data errors: the user must change something
        print(f"taidtron: error: {exc}", file=sys.stderr)
        return 2
    finally:
        destroy_distributed()


if __name__ == "__main__":
    sys.exit(main())
