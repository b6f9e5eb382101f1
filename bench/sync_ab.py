"""P1 A/B: the initial sync with the code of two (or more) checkouts, alternating.

``python -m bench.sync_ab before=/path/to/old/checkout,after=. [rounds]`` starts one
bench environment (Dovecot, S3, PostgreSQL), fills one mailbox as P1 does (``--messages``
bench messages and one of 25 MB), then syncs it into a new account with each checkout's
code in turn (``bench.sync_child`` started in that checkout with it on ``PYTHONPATH``;
attachments on local disk, the search index off unless ``--index``). Rounds alternate
the order. Prints each sync's CPU per message (the sync process and its database
backends), the fetching thread's share and the rest (the storing thread and the
database), msg/s and the database statements, and the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

from bench import sync_bench
from bench.env import bench_env
from tests.servers.mailgen import bulk


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sync_ab", description=__doc__)
    parser.add_argument("trees", help="name=checkout,name=checkout,...")
    parser.add_argument("rounds", type=int, nargs="?", default=3)
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--index", action="store_true", help="write the search index too")
    args = parser.parse_args()
    trees = {
        name: str(Path(path).resolve())
        for name, path in (item.split("=", 1) for item in args.trees.split(","))
    }
    runs: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in trees}
    with bench_env() as env:
        user = env.dovecot.new_user("ab-sync")
        mail = [*bulk(args.messages, seed=1), sync_bench.big_message()]
        sync_bench.fill(env, user, {"INBOX": mail})
        total = len(mail)
        sync_bench._search_btree(env, present=args.index)
        for number in range(args.rounds):
            order = list(trees) if number % 2 == 0 else list(reversed(trees))
            for name in order:
                os.environ["PYTHONPATH"] = trees[name]
                os.chdir(trees[name])  # `python -m` puts the working directory first
                sync_bench.wipe(env)
                caller, account_id = sync_bench.new_account(env, user)
                load = os.getloadavg()[0]
                [figures] = sync_bench.run_sync(
                    env, caller, account_id, local_blobs=True, search_index=args.index
                )
                assert figures["result"]["messagesAdded"] == total, figures["result"]
                cpu = (figures["cpu_seconds"] - figures["index_cpu_seconds"]) / total * 1000
                fetching = figures["main_thread_cpu_seconds"] / total * 1000
                rate = total / (figures["seconds"] - figures["index_seconds"])
                runs[name].append((cpu, fetching, cpu - fetching, rate))
                print(
                    f"round {number} {name}: {cpu:.3f} ms CPU/msg ({fetching:.3f} in the "
                    f"fetching thread, {cpu - fetching:.3f} the rest), {rate:.0f} msg/s, "
                    f"{figures['statements']} statements, "
                    f"{figures['db_round_trips']} round trips (load {load:.1f})",
                    flush=True,
                )
        sync_bench._search_btree(env, present=True)
    for name, rows in runs.items():
        cpu, fetching, rest, rate = (
            statistics.median(column) for column in zip(*rows, strict=True)
        )
        print(
            f"{name}: median {cpu:.3f} ms CPU/msg ({fetching:.3f} fetching thread, "
            f"{rest:.3f} the rest), {rate:.0f} msg/s"
        )


if __name__ == "__main__":
    main()
