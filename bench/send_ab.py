"""P5 A/B: sends through the API with the code of two (or more) checkouts, alternating.

``python -m bench.send_ab before=/path/to/old/checkout,after=. [rounds]`` starts one
bench environment (Dovecot, S3, PostgreSQL) and one SMTP server (offering PIPELINING
unless ``--no-pipelining``), measures the smtplib baseline, then runs the P5 burst
(``send_bench._through_the_api``) with each checkout's API and worker in turn: the
processes are started in that checkout with it on ``PYTHONPATH``. Rounds alternate the
order. Prints msg/s, the lone-message latency and the CPU per send of each run, and
the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

from bench import send_bench
from bench.env import bench_env
from tests.servers.smtp import SmtpServer


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.send_ab", description=__doc__)
    parser.add_argument("trees", help="name=checkout,name=checkout,...")
    parser.add_argument("rounds", type=int, nargs="?", default=3)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--no-pipelining", action="store_true")
    args = parser.parse_args()
    trees = {
        name: str(Path(path).resolve())
        for name, path in (item.split("=", 1) for item in args.trees.split(","))
    }
    runs: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in trees}
    with bench_env() as env:
        smtp = SmtpServer(env.dovecot, pipelining=not args.no_pipelining)
        smtp.start()
        try:
            sender, to = env.dovecot.new_user("ab-from"), env.dovecot.new_user("ab-to")
            base = send_bench._baseline(smtp, env, sender, to.email, args.messages)
            print(f"smtplib baseline: {base:.0f} msg/s", flush=True)
            for number in range(args.rounds):
                order = list(trees) if number % 2 == 0 else list(reversed(trees))
                for name in order:
                    os.environ["PYTHONPATH"] = trees[name]
                    os.chdir(trees[name])  # `python -m` puts the working directory first
                    load = os.getloadavg()[0]
                    rate, latency, cpu = send_bench._through_the_api(
                        env, smtp, sender, to.email, args.messages
                    )
                    runs[name].append((rate, latency, cpu[0], cpu[1]))
                    print(
                        f"round {number} {name}: {rate:.1f} msg/s, latency {latency:.0f} ms, "
                        f"CPU per send {cpu[0]:.2f} ms API + {cpu[1]:.2f} ms worker "
                        f"(load {load:.1f})",
                        flush=True,
                    )
            base = send_bench._baseline(smtp, env, sender, to.email, args.messages)
            print(f"smtplib baseline after: {base:.0f} msg/s", flush=True)
        finally:
            smtp.close()
    for name, rows in runs.items():
        columns = zip(*rows, strict=True)
        rate, latency, api, worker = (statistics.median(column) for column in columns)
        print(
            f"{name}: median {rate:.1f} msg/s, latency {latency:.0f} ms, "
            f"CPU per send {api:.2f} ms API + {worker:.2f} ms worker"
        )


if __name__ == "__main__":
    main()
