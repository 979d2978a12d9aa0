"""Checks for tests/multinode/run_multinode_test.sh, on files the runs leave behind.

    check.py placement --hosts node1,node2 --per-node 2 --rendezvous-ip 10.0.0.1 [--starts N] LOG...
        Every rank logged its placement line (taidtron.distributed.log_placement) N times (once per start of the
        job) across LOG...; rank r runs on hosts[r // per_node] as node r // per_node with local rank
        r % per_node, and met the others at --rendezvous-ip.
    check.py same-metrics RUN_DIR REFERENCE_RUN_DIR
        metrics.jsonl of both runs has the same steps with identical loss, grad_norm, taid_t, lr and
        consumed_tokens (bit for bit: same world size, same reduction order).

Prints one summary line and exits 0, or prints what differs and exits 1.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

PLACEMENT = re.compile(
    r"taidtron rank (\d+)/(\d+): host=(\S+) node=(\d+) local_rank=(\d+) "
    r"rendezvous=(\S+):(\d+) \((\S+)\) launcher=(\S+)"
)
COMPARED = ("loss", "grad_norm", "taid_t", "lr", "consumed_tokens")


def read_placements(logs: list[str]) -> dict[int, list[dict]]:
    """rank -> its placement lines (one per start), parsed."""
    seen: dict[int, list[dict]] = defaultdict(list)
    for log in logs:
        for line in Path(log).read_text(errors="replace").splitlines():
            if match := PLACEMENT.search(line):
                rank, size, host, node, local, addr, port, ip, launcher = match.groups()
                seen[int(rank)].append(
                    {
                        "world": int(size),
                        "host": host,
                        "node": int(node),
                        "local_rank": int(local),
                        "rendezvous": f"{addr}:{port}",
                        "ip": ip,
                        "launcher": launcher,
                    }
                )
    return seen


def placement(args: argparse.Namespace) -> list[str]:
    hosts = args.hosts.split(",")
    world = len(hosts) * args.per_node
    seen = read_placements(args.logs)
    errors = []
    for rank in range(world):
        want = {
            "world": world,
            "host": hosts[rank // args.per_node],
            "node": rank // args.per_node,
            "local_rank": rank % args.per_node,
            "ip": args.rendezvous_ip,
        }
        lines = seen.get(rank, [])
        if len(lines) != args.starts:
            errors.append(f"rank {rank}: {len(lines)} placement lines, expected {args.starts} (one per start)")
        for line in lines:
            got = {key: line[key] for key in want}
            if got != want:
                errors.append(f"rank {rank}: {got}, expected {want}")
    if extra := sorted(set(seen) - set(range(world))):
        errors.append(f"unexpected ranks {extra} in a world of {world}")
    if not errors:
        first = {rank: lines[0] for rank, lines in seen.items()}
        print(
            "placement: "
            + "; ".join(
                f"rank {r} on {v['host']} (node {v['node']}, local rank {v['local_rank']})"
                for r, v in sorted(first.items())
            )
            + f"; rendezvous {first[0]['rendezvous']} = {first[0]['ip']}, launcher {first[0]['launcher']}"
        )
    return errors


def same_metrics(args: argparse.Namespace) -> list[str]:
    def rows(run_dir: str) -> list[dict]:
        path = Path(run_dir) / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []

    run, ref = rows(args.run_dir), rows(args.reference)
    if not run or [r["step"] for r in run] != [r["step"] for r in ref]:
        return [f"steps {[r['step'] for r in run]} vs the reference's {[r['step'] for r in ref]}"]
    errors = [
        f"step {a['step']} {key}: {a[key]!r} vs the reference's {b[key]!r}"
        for a, b in zip(run, ref)
        for key in COMPARED
        if a[key] != b[key]
    ]
    if not errors:
        last = run[-1]
        print(
            f"identical to the reference at steps 1..{last['step']} (last: loss {last['loss']}, "
            f"grad_norm {last['grad_norm']}, t {last['taid_t']})"
        )
    return errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("placement")
    p.add_argument("--hosts", required=True)
    p.add_argument("--per-node", type=int, required=True)
    p.add_argument("--rendezvous-ip", required=True)
    p.add_argument("--starts", type=int, default=1)
    p.add_argument("logs", nargs="+")
    p.set_defaults(run=placement)
    m = sub.add_parser("same-metrics")
    m.add_argument("run_dir")
    m.add_argument("reference")
    m.set_defaults(run=same_metrics)
    args = parser.parse_args()
    errors = args.run(args)
    for error in errors:
        print(error)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
