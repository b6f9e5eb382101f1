"""``python -m bench``: set up, run every benchmark, print the table, write JSON."""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

from bench.env import bench_env

RESULTS = Path(__file__).resolve().parent / "results"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| id | what | baseline (same run) | ours | ratio | target |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        mark = "" if row.get("met", True) else " (missed)"
        lines.append(
            f"| {row['id']} | {row['what']} | {row['baseline']} | {row['value']} | "
            f"{row['ratio']:.2f}{mark} | {row['target']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", default="P1,P2,P3,P4,P5,P6,P9", help="comma-separated ids")
    parser.add_argument("--messages", type=int, default=10_000, help="P1 mailbox size")
    parser.add_argument("--list-rows", type=int, default=100_000, help="P3 folder size")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (median is kept)")
    parser.add_argument("--duration", type=int, default=10, help="P3 seconds of load")
    parser.add_argument("--search-rows", type=int, default=1_000_000, help="P9 messages")
    parser.add_argument("--push-messages", type=int, default=200, help="P7 INBOX messages")
    parser.add_argument("--push-folder-messages", type=int, default=50, help="P7 other folder")
    parser.add_argument("--push-accounts", type=int, default=1000, help="P8 accounts")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args()
    wanted = {item.strip().upper() for item in args.only.split(",")}

    from bench import api_bench, sync_bench

    rows: list[dict[str, Any]] = []
    with bench_env() as env:
        if "P1" in wanted or "P4" in wanted:
            rows.extend(sync_bench.p1_initial_sync(env, args.messages, args.reps))
        if "P2" in wanted:
            rows.append(sync_bench.p2_resync(env, 20, 500, args.reps))
        if "P3" in wanted or "P4" in wanted:
            rows.extend(api_bench.p3_list_messages(env, args.list_rows, args.duration, args.reps))
        if "P4" in wanted:
            rows.append(api_bench.p4_memory(rows))
        if "P5" in wanted:
            from bench import send_bench

            rows.extend(send_bench.p5_send(env, 500, args.reps))
        if "P6" in wanted:
            from bench import changes_bench, webhook_bench

            rows.extend(webhook_bench.p6_webhooks(env.database_url, env.env, 2000, 300, args.reps))
            rows.extend(changes_bench.p6_stream(env))
        if "P9" in wanted:
            from bench import search_bench

            rows.extend(search_bench.p9_search(env, args.search_rows, max(args.duration, 10)))
        if "P7" in wanted or "P8" in wanted:
            from bench import push_bench

            if "P7" in wanted:
                rows.extend(
                    push_bench.p7_freshness(env, args.push_messages, args.push_folder_messages)
                )
            if "P8" in wanted:
                rows.extend(push_bench.p8_scale(env, args.push_accounts))
    print()
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "machine": {"python": platform.python_version(), "cpus": _cpus()},
                "results": rows,
            },
            indent=2,
        )
    )
    print(f"\nresults written to {args.out}")


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
