"""Entry point: `python -m taidtron.train --config configs/smoke.yaml [section.key=value ...]`.

Parse, build, train, close. The loop lives in `taidtron.trainer`; launchers (torchrun, srun, deepspeed) only set
the rank environment that `taidtron.distributed` reads.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from taidtron import outcome


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from taidtron.config_docs import config_help

    parser = argparse.ArgumentParser(
        prog="taidtron-train",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Distil a teacher LM into a student with TAID on megatron-core (TP/PP/DP).",
        epilog="overrides: any config key as section.key=value, e.g. optim.lr=3e-4 parallel.tp=2\n"
        "exit codes: 0 done\n"
        "            2 bad input: configuration, checkpoint, tokenizer or data; a diverged run; a failed save\n"
        "              (the message says what to change)\n"
        "            75 preempted by SIGUSR1/SIGTERM/SIGINT after saving a checkpoint (requeue to resume)\n"
        "            128+N stopped by signal N without saving: a second SIGTERM/SIGINT, or a stop signal after\n"
        "              another rank of the job on this host had exited"
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


def check_output_dirs(cfg) -> None:
    """The run and checkpoint directories can be created and written: checked before anything is built, so that a
    typo does not surface at the first save."""
    from taidtron.config import ConfigError

    for key, directory in (("logging.run_dir", cfg.logging.run_dir), ("checkpoint.dir", cfg.checkpoint.dir)):
        if directory is None:
            continue
        try:
            Path(directory).mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=directory):
                pass
        except OSError as exc:
            raise ConfigError(
                f"{key}={directory} is not a writable directory ({exc.strerror or exc}); choose another {key}."
            ) from None


def user_error(kind: str, exc: Exception, stop=None) -> int:
    """Bad input: one line on stderr (whatever the message holds; a launcher that collects the ranks' outcomes prints
    it once for all of them, `taidtron.outcome`), exit code 2. `stop`: the rank's StopSignal, told that it ends."""
    if stop is not None:
        stop.finish(2)
    return outcome.finish(2, f"taidtron: {kind}: {' '.join(str(exc).split())}")


@contextlib.contextmanager
def session(cfg, *, launch=None, roles=None) -> Iterator:
    """The distributed world of one run: process groups for `cfg.parallel` (`launch`: where this process sits; by
    default the launcher's environment), the layout checked against the models (`roles`; by default those the run
    builds), every RNG seeded; torn down on exit, also when any of it fails. Yields the `ParallelContext`."""
    from taidtron.distributed import destroy_distributed, init_distributed, read_launch_env, seed_everything
    from taidtron.losses import run_models

    launch = launch or read_launch_env()
    roles = tuple(run_models(cfg)) if roles is None else roles
    cfg.validate_layout(launch.world_size, roles)  # before any rank announces itself or connects
    try:
        ctx = init_distributed(cfg.parallel, launch=launch)
        seed_everything(cfg.seed, ctx)
        yield ctx
    finally:
        destroy_distributed()


def run(cfg, *, launch=None, stop=None) -> int:
    """Train one run in this process (`session` + `fit`): what `main` does after parsing, and what every tool that
    trains calls. Returns the exit code (0 done, 75 preempted after a save); bad input raises ValueError."""
    from taidtron.loop import fit

    with session(cfg, launch=launch) as ctx:
        return fit(cfg, ctx, stop)


def start_process():
    """First thing in an entry point, before torch is imported: a SIGUSR1/SIGTERM during start-up must not kill the
    rank, every helper process forked from here on dies with this one, and this rank dies with its launcher
    (torchrun, DeepSpeed's). Returns the `StopSignal` that records a stop signal from now on."""
    from taidtron import lifetime
    from taidtron.preemption import StopSignal

    stop = StopSignal()
    lifetime.install()
    lifetime.die_with_launcher()
    return stop


def main(argv: list[str] | None = None) -> int:
    stop = start_process()
    from taidtron.config import ConfigError, load_config

    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        check_output_dirs(cfg)
    except ConfigError as exc:
        return user_error("configuration error", exc, stop)
    try:  # an install to repair: taidtron.models first, it names a broken Transformer Engine with its fix
        import taidtron.models  # noqa: F401
        import taidtron.trainer  # noqa: F401
    except ImportError as exc:
        return user_error("installation error", exc, stop)
    try:
        code = run(cfg, stop=stop)
    except ValueError as exc:  # ConfigError, CheckpointError, tokenizer/data errors: the user must change something
        return user_error("error", exc, stop)
    stop.finish(code)
    return outcome.finish(code)


if __name__ == "__main__":
    sys.exit(main())
