"""How fast the online loop turns human judgements into the next round's tasks, and whether it
learns as well through the web app as the training package does alone.

Starts Tandem the production way (gunicorn + a Celery worker with beat, Postgres, Redis) on a
fresh `tandem_bench_loop` database, then runs `simulate_annotators` with the warm-words oracle
and automatic triggers. Prints, per round:

- the latency from the judgement that crossed the trigger threshold to the first new task of the
  round, split into waiting for the tick, each stage, and the rest;
- the reward ensemble's held-out accuracy (against human, i.e. oracle, labels) and the blind
  human win rate of π_r over π_{r-1};
- the oracle win rate of π_r over π_0 on held-out prompts, measured exactly as
  bench/oracle_loop.py measures it, next to that benchmark's figures when bench/out/oracle_loop.json
  exists.

    .venv/bin/python -m bench.loop_latency [--rounds 3] [--json bench/out/loop_latency.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, VENV_BIN, Server, fresh_db, manage, server_env, table, write_json

DB = "tandem_bench_loop"
BROKER = os.environ.get("BENCH_LOOP_BROKER", "redis://127.0.0.1:6379/14")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the loop")
    parser.add_argument("--annotators", type=int, default=4, help="simulated annotators")
    parser.add_argument(
        "--prompts-per-round",
        type=int,
        default=96,
        help="prompts per round (as bench/oracle_loop.py)",
    )
    parser.add_argument(
        "--eval-prompts", type=int, default=48, help="held-out prompts (as bench/oracle_loop.py)"
    )
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "out" / "loop_latency.json")
    parser.add_argument(
        "--timeout", type=float, default=1800, help="give up after this many seconds"
    )
    args = parser.parse_args(argv)

    artifacts = Path(tempfile.mkdtemp(prefix="tandem-loop-bench-"))
    env = server_env(
        DB,
        CELERY_BROKER_URL=BROKER,
        TANDEM_ARTIFACT_ROOT=str(artifacts),
        TANDEM_LOOP_TICK_SECONDS="1",
        TANDEM_LOOP_STALE_SECONDS="120",
    )
    fresh_db(DB)
    subprocess.run(
        [sys.executable, "-c", f"import redis; redis.Redis.from_url({BROKER!r}).flushdb()"],
        check=True,
    )
    started = time.monotonic()
    worker_log = (REPO / "bench" / "out" / "loop-worker.log").open("wb")
    worker = subprocess.Popen(
        [
            str(VENV_BIN / "celery"),
            "-A",
            "webapp",
            "worker",
            "-B",
            "-s",
            str(artifacts / "beat"),
            "-Q",
            "cpu",
            "-P",
            "solo",
            "--loglevel=INFO",
        ],
        cwd=REPO,
        env=env,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        with Server(env=env, workers=2) as server:
            output = manage(
                "simulate_annotators",
                "--url", server.url(""),
                "--annotators", str(args.annotators),
                "--rounds", str(args.rounds),
                "--prompts-per-round", str(args.prompts_per_round),
                "--eval-prompts", str(args.eval_prompts),
                "--trigger", "auto",
                # The package benchmark's recipe, so the two win rates compare like with like:
                # its π_0 (120 SFT steps), best-vs-worst pairs, and rounds that start once 90% of
                # a round's pairs are labelled.
                "--warm-start-steps", "120",
                "--selection", "best_vs_worst",
                "--trigger-judgements", str(max(1, int(0.9 * args.prompts_per_round))),
                "--timeout", str(args.timeout),
                env=env,
                timeout=args.timeout + 120,
            )  # fmt: skip
    finally:
        os.killpg(worker.pid, 9)
        worker.wait()
        worker_log.close()
    print(output)
    figures = measure(env, args)
    figures["seconds"] = round(time.monotonic() - started, 1)
    report(figures)
    write_json(args.json, figures)
    return 0


MEASURE = r"""
import json
from annotation.models import Judgement, ModelVersion, Project, Round, Task
from annotation.selectors.export import Position
from annotation.loop import LoopSettings
from annotation.selectors.rounds import rounds_of
project = Project.objects.get(name__startswith="Oracle loop")
loop = LoopSettings.parse(project.loop)
out = {"project": project.pk, "trigger_judgements": loop.trigger_judgements, "rounds": []}
previous_cursor = None
for row, r in zip(rounds_of(project=project), Round.objects.filter(project=project).order_by("number")):
    judgements = Judgement.objects.filter(project=project).order_by("commit_seq", "id")
    if previous_cursor:
        judgements = judgements.filter(Position.decode(previous_cursor).after())
    trigger = judgements[loop.trigger_judgements - 1] if judgements.count() >= loop.trigger_judgements else None
    first_task = Task.objects.filter(project=project, round=r.number).order_by("created_at").first()
    stages = {run.stage: (run.started_at.isoformat() if run.started_at else None,
                          run.finished_at.isoformat() if run.finished_at else None) for run in r.runs.all()}
    policy = ModelVersion.objects.filter(project=project, kind="policy", round=r.number).first()
    out["rounds"].append({
        "round": r.number, "status": r.status, "judgements": r.judgements,
        "trigger_at": trigger.created_at.isoformat() if trigger else None,
        "round_created_at": r.created_at.isoformat(),
        "first_task_at": first_task.created_at.isoformat() if first_task else None,
        "stages": stages, "reward_accuracy": r.reward_accuracy,
        "human_win_rate": row.win_rate, "human_win_rate_ci": row.win_rate_ci, "human_win_rate_n": row.win_rate_n,
        "policy": policy.artifact_path if policy else None,
    })
    previous_cursor = r.data_cursor
base = ModelVersion.objects.get(project=project, kind="policy", round=0)
out["pi0"] = base.artifact_path
print("RESULT " + json.dumps(out))
"""


def _seconds(a: str | None, b: str | None) -> float | None:
    from datetime import datetime

    if not a or not b:
        return None
    return round((datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds(), 1)


def measure(env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    out = manage("shell", "-c", MEASURE, env=env, timeout=300)
    line = next(line for line in reversed(out.splitlines()) if line.startswith("RESULT "))
    data = json.loads(line[len("RESULT ") :])
    # With automatic triggers, labelling the last round's evaluation tasks already starts the next
    # round, which the simulation leaves unfinished: only the rounds it drove are measured.
    data["rounds"] = [r for r in data["rounds"] if r["round"] <= args.rounds]
    win_rates = oracle_win_rates(
        data["pi0"], [r["policy"] for r in data["rounds"]], args.eval_prompts, data["project"]
    )
    for r, rate in zip(data["rounds"], win_rates, strict=True):
        r["oracle_win_rate_vs_initial"] = rate
        stages = r["stages"]
        r["latency"] = {
            "tick": _seconds(r["trigger_at"], r["round_created_at"]),
            **{
                stage: _seconds(*stages.get(stage, (None, None)))
                for stage in ("reward", "policy", "generate", "select")
            },
            "total": _seconds(r["trigger_at"], r["first_task_at"]),
        }
    reference = REPO / "bench" / "out" / "oracle_loop.json"
    if reference.exists():
        data["oracle_loop_reference"] = json.loads(reference.read_text()).get("rounds")
    return data


def oracle_win_rates(
    pi0: str, policies: list[str | None], eval_prompts: int, seed: int
) -> list[float | None]:
    """π_r against π_0 on the held-out prompts, sample i against sample i, ties half (bench/oracle_loop.py)."""
    import random

    sys.path.insert(0, str(REPO))
    from training.generation import GenerationConfig, TransformersGenerator, set_cpu_threads
    from training.oracles import oracle_named

    set_cpu_threads()
    oracle = oracle_named("warm-words")
    prompts = oracle.prompts()
    random.Random(0).shuffle(prompts)  # oracle_project_setup's default seed: its held-out prompts
    held_out = prompts[:eval_prompts]
    config = GenerationConfig(k=4, temperature=1.0, max_new_tokens=14, seed=0)  # as oracle_loop.py
    base = TransformersGenerator(pi0, device="cpu").generate(held_out, config)
    rates: list[float | None] = []
    for path in policies:
        if path is None:
            rates.append(None)
            continue
        ours = TransformersGenerator(path, device="cpu").generate(held_out, config)
        wins = [
            1.0
            if oracle.utility(a) > oracle.utility(b)
            else 0.5
            if oracle.utility(a) == oracle.utility(b)
            else 0.0
            for mine, theirs in zip(ours, base, strict=True)
            for a, b in zip(mine, theirs, strict=True)
        ]
        rates.append(round(sum(wins) / len(wins), 4))
    return rates


def report(data: dict[str, Any]) -> None:
    rows = []
    for r in data["rounds"]:
        lat = r["latency"]
        rows.append(
            [
                r["round"],
                r["status"],
                r["judgements"],
                lat["tick"],
                lat["reward"],
                lat["policy"],
                lat["generate"],
                lat["select"],
                lat["total"],
            ]
        )
    print(
        table(
            [
                "round",
                "status",
                "judgements",
                "tick s",
                "reward s",
                "policy s",
                "generate s",
                "select s",
                "trigger→first task s",
            ],
            rows,
            title="Loop latency (tiny CPU models)",
        )
    )
    reference = {r["round"]: r for r in data.get("oracle_loop_reference") or []}
    rows = []
    for r in data["rounds"]:
        ref = reference.get(r["round"], {})
        ci = r["human_win_rate_ci"]
        rows.append(
            [
                r["round"],
                r["reward_accuracy"],
                r["human_win_rate"],
                f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "-",
                r["oracle_win_rate_vs_initial"],
                ref.get("win_rate_vs_initial"),
                ref.get("reward_accuracy"),
            ]
        )
    print(
        table(
            [
                "round",
                "reward acc (web)",
                "human win vs π_{r-1}",
                "95% CI",
                "oracle win vs π0 (web)",
                "oracle win vs π0 (package bench)",
                "reward acc (package bench)",
            ],
            rows,
            title="Does the loop learn through the web app as it does in the package?",
        )
    )


if __name__ == "__main__":
    raise SystemExit(main())
