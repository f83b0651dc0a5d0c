"""How fast the online loop turns human judgements into the next round's tasks, and whether it
learns as well through the web app as the training package does alone.

Starts Tandem the production way (gunicorn + a Celery worker with beat, Postgres, Redis) on a
fresh `<BENCH_DB>_loop` database, then runs `simulate_annotators` with the warm-words oracle
and automatic triggers. Prints, per round:

- the latency from the judgement that crossed the trigger threshold to the first new task of the
  round, split into waiting for the tick, each stage, and the rest;
- the reward ensemble's held-out accuracy (against human, i.e. oracle, labels) and the blind
  human win rate of π_r over π_{r-1};
- the oracle win rate of π_r over π_0 on held-out prompts, measured exactly as
  bench/oracle_loop.py measures it, next to that benchmark's figures ON THE SAME COMMIT: by
  default (`--package run`) this invocation runs the package recipe itself with the same sizes;
  `--package reuse` reads `--package-json` and refuses one that ran on another commit, on a
  tree with uncommitted changes, or with another recipe; `--package skip` leaves the column out.

    .venv/bin/python -m bench.loop_latency [--rounds 3] [--json bench/out/loop_latency.json]
    .venv/bin/python -m bench.loop_latency --smoke   # 1 round, tiny sizes: checks it still runs
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

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402
from bench.common import REPO, Server, fresh_db, manage, server_env, table  # noqa: E402

DB = os.environ.get("BENCH_LOOP_DB", common.BENCH_DB + "_loop")
BROKER = os.environ.get("BENCH_LOOP_BROKER", "redis://127.0.0.1:6379/14")
SMOKE = ["--rounds", "1", "--annotators", "2", "--prompts-per-round", "16", "--eval-prompts", "8",
         "--warm-start-steps", "60", "--package", "skip", "--timeout", "300"]  # fmt: skip


def parser() -> argparse.ArgumentParser:
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
    parser.add_argument(
        "--warm-start-steps",
        type=int,
        default=120,
        help="π_0's SFT steps (as bench/oracle_loop.py)",
    )
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "out" / "loop_latency.json")
    parser.add_argument(
        "--timeout", type=float, default=1800, help="give up after this many seconds"
    )
    parser.add_argument(
        "--package",
        choices=["run", "reuse", "skip"],
        default="run",
        help="the package benchmark to compare with: run it here on this commit (default), "
        "reuse --package-json (refused unless same commit, clean tree, same recipe), or skip",
    )
    parser.add_argument(
        "--package-json",
        type=Path,
        default=REPO / "bench" / "out" / "oracle_loop.json",
        help="with --package reuse: the bench/oracle_loop.py JSON to compare with",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="seconds, not minutes: " + " ".join(SMOKE),
    )
    common.add_record_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--smoke" in argv:
        argv = SMOKE + argv
    args = parser().parse_args(argv)
    package: dict[str, Any] | None = None
    if args.package == "reuse":
        # Checked before the long run, so a stale file costs nothing.
        package = json.loads(args.package_json.read_text()) if args.package_json.exists() else {}
        problems = package_problems(package, recipe(args), common.git_commit())
        if problems:
            print(f"refusing {args.package_json}: " + "; ".join(problems), file=sys.stderr)
            print("run with --package run to measure the package on this commit", file=sys.stderr)
            return 2
    with common.RunMeter(db=DB) as meter:
        figures = run(args)
        if args.package == "run":
            package = run_package(args)
    if package is not None:
        figures["package_reference"] = {
            "how": "run in this invocation" if args.package == "run" else str(args.package_json),
            "commit": package.get("commit"),
            "settings": package.get("settings"),
            "rounds": package.get("rounds"),
        }
    data = common.record(
        "loop_latency",
        argv,
        meter,
        figures,
        json_path=args.json,
        save=args.save_result,
        smoke=args.smoke,
    )
    print(common.provenance_header(data))
    report(data)
    return 0


def recipe(args: argparse.Namespace) -> dict[str, int]:
    """The package benchmark's settings this web run mirrors (bench.oracle_loop.Settings names)."""
    return {
        "prompts_per_round": args.prompts_per_round,
        "eval_prompts": args.eval_prompts,
        "sft_steps": args.warm_start_steps,
        "rounds": args.rounds,
        "seed": 0,
    }


def package_problems(
    package: dict[str, Any], wanted: dict[str, int], head: dict[str, Any]
) -> list[str]:
    """Why a bench/oracle_loop.py result cannot stand next to this run ([] if it can)."""
    if not package:
        return ["no such file"]
    problems = []
    commit = package.get("commit") or {}
    if not commit.get("sha"):
        problems.append("it records no commit (written before results carried one)")
    elif commit["sha"] != head.get("sha"):
        problems.append(
            f"it ran on commit {commit['sha'][:10]}, this is {str(head.get('sha'))[:10]}"
        )
    if commit.get("dirty") or head.get("dirty"):
        problems.append("uncommitted changes (there or here): the same commit is not the same code")
    if package.get("smoke"):
        problems.append("it is a --smoke run")
    settings = package.get("settings") or {}
    for key, value in wanted.items():
        have = settings.get(key)
        if key == "rounds" and isinstance(have, int) and have >= value:
            continue
        if have != value:
            problems.append(f"its {key} is {have}, this run's is {value}")
    return problems


def run_package(args: argparse.Namespace) -> dict[str, Any]:
    """bench/oracle_loop.py's online loop with this run's sizes, in this invocation."""
    out = REPO / "bench" / "out" / "oracle_loop.same-run.json"
    r = recipe(args)
    cmd = [sys.executable, "-m", "bench.oracle_loop", "--skip-selection", "--json", str(out)]
    cmd += ["--rounds", str(r["rounds"]), "--prompts-per-round", str(r["prompts_per_round"])]
    cmd += ["--eval-prompts", str(r["eval_prompts"]), "--sft-steps", str(r["sft_steps"])]
    print("[loop_latency] the package benchmark on this commit:", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True, timeout=args.timeout)
    return json.loads(out.read_text())


def run(args: argparse.Namespace) -> dict[str, Any]:
    artifacts = Path(tempfile.mkdtemp(prefix="tandem-loop-bench-"))
    env = server_env(
        DB,
        CELERY_BROKER_URL=BROKER,
        TANDEM_ARTIFACT_ROOT=str(artifacts),
        TANDEM_LOOP_TICK_SECONDS="1",
        TANDEM_LOOP_STALE_SECONDS="120",
    )
    fresh_db(DB)
    started = time.monotonic()
    worker = common.CeleryWorker(
        env=env,
        beat_schedule=artifacts / "beat",
        log_path=REPO / "bench" / "out" / "loop-worker.log",
    )
    with worker, Server(env=env, workers=2) as server:
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
            "--warm-start-steps", str(args.warm_start_steps),
            "--selection", "best_vs_worst",
            "--trigger-judgements", str(max(1, int(0.9 * args.prompts_per_round))),
            "--timeout", str(args.timeout),
            env=env,
            timeout=args.timeout + 120,
        )  # fmt: skip
    print(output)
    figures = measure(env, args)
    figures["seconds"] = round(time.monotonic() - started, 1)
    figures["setup"] = {
        "server": server.description,
        "worker": "celery -A webapp worker -B -Q cpu -P solo (Redis broker)",
        "database": f"Postgres, fresh database {DB}",
        "annotators": args.annotators,
        "recipe": recipe(args),
        "trigger_judgements": max(1, int(0.9 * args.prompts_per_round)),
    }
    return figures


MEASURE = r"""
import json
from annotation.models import Judgement, ModelVersion, Project, Round, Task
from annotation.selectors.export import Position
from annotation.loop import LoopSettings
from annotation.selectors.rounds import rounds_of
project = Project.objects.get(name__startswith="Oracle loop")
# The project's own artifact folder holds its π_0: parse as the project does.
loop = LoopSettings.parse(project.loop, project_id=project.pk)
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
    package = data.get("package_reference") or {}
    reference = {r["round"]: r for r in package.get("rounds") or []}
    sha = str((package.get("commit") or {}).get("sha"))[:10]
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
                f"oracle win vs π0 (package bench, {sha})",
                f"reward acc (package bench, {sha})",
            ],
            rows,
            title="Does the loop learn through the web app as it does in the package?",
        )
    )
    if package:
        print(f"Package benchmark: {package['how']}, commit {sha}, same recipe.")
    else:
        print("Package benchmark: not compared (--package skip).")


if __name__ == "__main__":
    raise SystemExit(main())
