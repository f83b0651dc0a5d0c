"""The multimodal (hallucination) loop through the web app, measured beside the training package.

Starts Tandem the production way (gunicorn + a Celery worker with beat, Postgres, Redis) on a
fresh `<BENCH_DB>_hloop` database and sets up a hallucination project on bench/hallucination_world's
scene world with the package bench's recipe (annotation/services/simulation_scenes.py): the same
seeded scenes and questions, π_0 the tiny VLM warm-started on answers that hallucinate 40% of the
time (saved in a folder given to the app as TANDEM_MODEL_ROOTS), the images stored through the
image service, each prompt with its captions as context, round-0 tasks of two π_0 answers per
prompt. `simulate_annotators` then runs R rounds with the scene oracle over REST (it marks every
false claim as a span, with its category, and prefers the answer with fewer). Per round it prints:

- π_r's hallucination rate on the held-out images as the oracle labelled it, any and per
  category, from the rounds API (`policy_stats.held_out`; π_0's from round 1's
  `previous_policy_stats`), and the blind human (oracle) win rate of π_r over π_{r-1};
- the Fact-RLHF reward's held-out accuracy with the image facts and without (the blind model);
- each stage's latency (reward, policy, generate, select) and the round's start to its first task;
- BESIDE them the package bench's figures (bench/hallucination_loop.py's `run_loop`) for the same
  recipe and sizes: `--package run` (default) runs it in this invocation first and the web loop
  then starts from the very π_0 it warm-started; `--package reuse` reads `--package-json` and
  refuses one of another commit, a dirty tree or other settings; `--package skip` leaves it out.

The two loops differ where the app does: the web loop's annotators judge one pair per prompt
(round 0: two π_0 answers; later rounds: the reward model's best against its worst of K=4), the
package's oracle every distinct pair of K=4; the web's held-out rate is over one answer per
held-out prompt and round, the package's over two.

The defaults are the package bench's recipe at sizes that run both loops in about 11 minutes on
a busy 2-core CPU (its own defaults: 4000 warm-start steps, 128 prompts a round, 96 held out).

    .venv/bin/python -m bench.web_hallucination_loop [--rounds 3] [--json PATH]
    .venv/bin/python -m bench.web_hallucination_loop --smoke   # 1 tiny round: checks it runs
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402
from bench.common import REPO, Server, fresh_db, manage, server_env, table  # noqa: E402
from bench.hallucination_loop import Settings  # noqa: E402

DB = os.environ.get("BENCH_LOOP_DB", common.BENCH_DB + "_hloop")
BROKER = os.environ.get("BENCH_LOOP_BROKER", "redis://127.0.0.1:6379/14")
CATEGORIES = ("object", "attribute", "count", "relation")
STAGES = ("reward", "policy", "generate", "select")
SMOKE = ["--rounds", "1", "--annotators", "2", "--sft-prompts", "32", "--sft-steps", "200",
         "--prompts-per-round", "12", "--eval-prompts", "6", "--max-new-tokens", "40",
         "--reward-max-steps", "1", "--package", "skip", "--timeout", "600"]  # fmt: skip


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=3, help="rounds of the loop")
    p.add_argument("--annotators", type=int, default=2, help="simulated annotators")
    p.add_argument("--seed", type=int, default=0, help="the world's and π_0's seed")
    p.add_argument(
        "--sft-prompts", type=int, default=Settings.sft_prompts, help="π_0's warm-start scenes"
    )
    p.add_argument(
        "--sft-steps", type=int, default=Settings.sft_steps, help="π_0's warm-start steps"
    )
    p.add_argument("--prompts-per-round", type=int, default=64, help="training prompts a round")
    p.add_argument("--eval-prompts", type=int, default=48, help="held-out scenes")
    p.add_argument("--max-new-tokens", type=int, default=48, help="answer length cap")
    p.add_argument(
        "--reward-max-steps", type=int, default=-1, help="cap the reward's steps (-1: epochs)"
    )
    p.add_argument(
        "--json", type=Path, default=REPO / "bench" / "out" / "web_hallucination_loop.json"
    )
    p.add_argument("--timeout", type=float, default=1800, help="give up after this many seconds")
    p.add_argument(
        "--package",
        choices=["run", "reuse", "skip"],
        default="run",
        help="the package bench to compare with: run it here first (default; the web loop then "
        "starts from its π_0), reuse --package-json (same commit, clean tree, same settings), "
        "or skip",
    )
    p.add_argument(
        "--package-json",
        type=Path,
        default=REPO / "bench" / "out" / "hallucination_loop.json",
        help="with --package reuse: the bench/hallucination_loop.py JSON to compare with",
    )
    p.add_argument("--smoke", action="store_true", help="seconds, not minutes: " + " ".join(SMOKE))
    common.add_record_args(p)
    return p


def settings_of(args: argparse.Namespace) -> Any:
    """The package bench's Settings for this run's sizes (its defaults for the rest)."""
    return replace(
        Settings(),
        seed=args.seed,
        rounds=args.rounds,
        sft_prompts=args.sft_prompts,
        sft_steps=args.sft_steps,
        prompts_per_round=args.prompts_per_round,
        eval_prompts=args.eval_prompts,
        max_new_tokens=args.max_new_tokens,
        reward_max_steps=args.reward_max_steps,
    )


def package_problems(package: dict[str, Any], wanted: dict[str, Any], head: dict[str, Any]):
    """Why a bench/hallucination_loop.py result cannot stand beside this run ([] if it can)."""
    if not package:
        return ["no such file"]
    problems = []
    commit = package.get("commit") or {}
    if commit.get("sha") != head.get("sha"):
        problems.append(
            f"it ran on commit {str(commit.get('sha'))[:10]}, this is {head['sha'][:10]}"
        )
    if commit.get("dirty") or head.get("dirty"):
        problems.append("uncommitted changes (there or here): the same commit is not the same code")
    have = package.get("settings") or {}
    for key, value in wanted.items():
        if key == "rounds" and isinstance(have.get(key), int) and have[key] >= value:
            continue
        if key != "threads" and have.get(key) != value:
            problems.append(f"its {key} is {have.get(key)}, this run's is {value}")
    return problems


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--smoke" in argv:
        argv = SMOKE + argv
    args = parser().parse_args(argv)
    settings = settings_of(args)
    package: dict[str, Any] | None = None
    if args.package == "reuse":
        path = args.package_json
        package = json.loads(path.read_text()) if path.exists() else {}
        problems = package_problems(package, asdict(settings), common.git_commit())
        if problems:
            print(f"refusing {path}: " + "; ".join(problems), file=sys.stderr)
            return 2
        package["how"] = str(path)
    work = Path(tempfile.mkdtemp(prefix="tandem-hloop-bench-"))
    models = work / "models"  # TANDEM_MODEL_ROOTS: π_0 lives here
    try:
        with common.RunMeter(db=DB) as meter:
            if args.package == "run":
                package = run_package(models / "package", settings)
                pi0 = models / "package" / "pi0"  # the very π_0 the package bench started from
            else:
                pi0 = build_pi0(models / "own", settings)
            figures = run_web(args, settings, work, pi0)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # models, artifacts, images: hundreds of MB
    if package is not None:
        figures["package_reference"] = {
            "how": package.get("how"),
            "commit": package.get("commit"),
            "settings": package.get("settings"),
            "rounds": package.get("rounds"),
            "seconds": package.get("seconds"),
        }
    data = common.record(
        "web_hallucination_loop",
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


def run_package(work: Path, settings: Any) -> dict[str, Any]:
    """bench/hallucination_loop.py's loop with this run's settings, in this process."""
    from bench.hallucination_loop import run_loop
    from training.generation import set_cpu_threads

    os.environ["TANDEM_CPU_THREADS"] = str(settings.threads)
    set_cpu_threads()
    print("[web_hallucination_loop] the package bench first, same settings:", flush=True)
    out = run_loop(work, settings)
    return {**out, "settings": asdict(settings), "commit": common.git_commit(), "how": "run here"}


def build_pi0(work: Path, s: Any) -> Path:
    """π_0 as bench/hallucination_loop.py's run_loop builds it: the same draws, init and steps."""
    from bench.hallucination_loop import initial_policy
    from bench.hallucination_world import Images, make_prompts

    rng = random.Random(s.seed)
    train = make_prompts(rng, s.sft_prompts, "train-")
    make_prompts(rng, s.rounds * s.prompts_per_round, "round-")  # keeps rng in step
    make_prompts(rng, s.eval_prompts, "eval-")
    images = Images(s.image_size)
    images.add(train)
    return initial_policy(work, s, rng, train, images)


# Run by `manage.py shell`: the project through the app's own setup service. The world is drawn
# with the service's `scene_prompts` in the package bench's order (sft, round, eval scenes from one
# seeded generator), so the round slices and held-out scenes are the package's; one more slice,
# drawn after, is what the last round generates for.
SETUP = r"""
import json, random
from pathlib import Path
from annotation.services.simulation_scenes import scene_project_setup, scene_prompts
from annotation.management.commands.simulate_annotators import _simulator_user
c = json.loads(CONFIG)
rng = random.Random(c["seed"])
scene_prompts(rng, c["sft_prompts"], "train-")
rounds = scene_prompts(rng, c["rounds"] * c["ppr"], "round-")
held_out = scene_prompts(rng, c["eval"], "eval-")
extra = scene_prompts(random.Random(c["seed"] + 1), c["ppr"], "extra-")
project = scene_project_setup(
    creator=_simulator_user(), policy=Path(c["pi0"]), train=rounds + extra, evaluation=held_out,
    prompts_per_round=c["ppr"], name="Shapes loop (bench)", image_size=c["image_size"],
    loop=c["loop"], seed=c["seed"],
)
print("RESULT " + json.dumps({"project": project.pk, "tasks": project.tasks.count()}))
"""


def run_web(args: argparse.Namespace, s: Any, work: Path, pi0: Path) -> dict[str, Any]:
    artifacts = work / "artifacts"
    artifacts.mkdir(parents=True)
    env = server_env(
        DB,
        CELERY_BROKER_URL=BROKER,
        TANDEM_ARTIFACT_ROOT=str(artifacts),
        TANDEM_MODEL_ROOTS=str(pi0.parent.parent),
        DJANGO_MEDIA_ROOT=str(work / "media"),
        TANDEM_LOOP_TICK_SECONDS="1",
        TANDEM_LOOP_STALE_SECONDS="600",
        TANDEM_CPU_THREADS=str(s.threads),
    )
    fresh_db(DB)
    started = time.monotonic()
    loop = {
        "generation": {"max_new_tokens": s.max_new_tokens, "temperature": 1.0},
        "reward": {"max_steps": s.reward_max_steps},
    }
    config = {
        "seed": s.seed,
        "sft_prompts": s.sft_prompts,
        "rounds": s.rounds,
        "ppr": s.prompts_per_round,
        "eval": s.eval_prompts,
        "pi0": str(pi0),
        "image_size": s.image_size,
        "loop": loop,
    }
    code = f"CONFIG = {json.dumps(json.dumps(config))}\n" + SETUP
    setup = common.django_shell(code, env=env, timeout=args.timeout)
    setup_seconds = round(time.monotonic() - started, 1)
    print(f"[web_hallucination_loop] project {setup['project']}: {setup['tasks']} round-0 tasks")
    worker = common.CeleryWorker(
        env=env, beat_schedule=artifacts / "beat", log_path=REPO / "bench" / "out" / "hloop.log"
    )
    with worker, Server(env=env, workers=2) as server:
        output = manage(
            "simulate_annotators",
            "--url", server.url(""),
            "--project", str(setup["project"]),
            "--annotators", str(args.annotators),
            "--rounds", str(s.rounds),
            "--correction-share", "0",  # the package bench trains on preferences only
            "--timeout", str(args.timeout),
            env=env,
            timeout=args.timeout + 120,
        )  # fmt: skip
        print(output)
        measure_code = f"PROJECT = {setup['project']}\nURL = {server.url('')!r}\n" + MEASURE
        figures = common.django_shell(measure_code, env=env, timeout=300)
    figures["rounds"] = [summarise(r) for r in figures["rounds"] if 1 <= r["number"] <= s.rounds]
    figures["seconds"] = round(time.monotonic() - started, 1)
    figures["setup"] = {
        "server": server.description,
        "worker": "celery -A webapp worker -B -Q cpu -P solo (Redis broker)",
        "database": f"Postgres, fresh database {DB}",
        "annotators": args.annotators,
        "settings": asdict(s),
        "pi0": "the package bench's own" if args.package == "run" else "built here, same recipe",
        "setup_seconds": setup_seconds,
        "loop": figures.pop("loop"),
    }
    return figures


# Run by `manage.py shell` while the server is up: the rounds as the REST API reports them, and
# what it does not carry (stage times, the blind reward model's accuracy) from the database.
MEASURE = r"""
import json, httpx
from annotation.models import ModelVersion, Round, Task
from annotation.services.tokens import token_issue
from annotation.management.commands.simulate_annotators import _simulator_user
from annotation.models import Project
token = token_issue(user=_simulator_user(), name="bench-measure")[1]
api = httpx.get(f"{URL.rstrip('/')}/api/v1/projects/{PROJECT}/rounds",
                headers={"Authorization": f"Token {token}"}, timeout=120)
api.raise_for_status()
out = {"project": PROJECT, "loop": Project.objects.get(pk=PROJECT).loop, "rounds": []}
for row in api.json():
    r = Round.objects.get(project_id=PROJECT, number=row["number"])
    reward = ModelVersion.objects.filter(project_id=PROJECT, kind="reward", round=r.number).first()
    first = Task.objects.filter(project_id=PROJECT, round=r.number).order_by("created_at").first()
    iso = lambda t: t.isoformat() if t else None
    out["rounds"].append({**row,
        "stage_times": {run.stage: [iso(run.started_at), iso(run.finished_at)] for run in r.runs.all()},
        "created_at": iso(r.created_at), "first_task_at": iso(first.created_at if first else None),
        "reward_metrics": reward.metrics if reward else None,
    })
print("RESULT " + json.dumps(out))
"""


def _seconds(a: str | None, b: str | None) -> float | None:
    if not a or not b:
        return None
    return round((datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds(), 1)


def _held_out(stats: dict[str, Any] | None) -> dict[str, Any] | None:
    """A policy's held-out figures from the rounds API: rate any, per category, judged answers."""
    if not stats:
        return None
    held = stats["held_out"]
    return {
        "name": stats.get("name"),
        "judged": held["judged"],
        "hallucination_rate": held["hallucinated"],
        "per_category": {c: held["by_category"].get(c) for c in CATEGORIES},
    }


def summarise(row: dict[str, Any]) -> dict[str, Any]:
    """One round's record: the API's figures, the reward's accuracies, the latencies."""
    metrics = row.get("reward_metrics") or {}
    times = row["stage_times"]
    return {
        "round": row["number"],
        "status": row["status"],
        "judgements": row["judgements"],
        "policy": _held_out(row["policy_stats"]),
        "previous_policy": _held_out(row["previous_policy_stats"]),
        "human_win_rate": row["win_rate"],
        "human_win_rate_ci": row["win_rate_ci"],
        "human_win_rate_n": row["win_rate_n"],
        "reward_accuracy": row["reward_accuracy"],
        "reward_accuracy_without_facts": (metrics.get("without_facts") or {}).get("accuracy"),
        "latency": {
            **{s: _seconds(*times.get(s, (None, None))) for s in STAGES},
            "start_to_first_task": _seconds(row["created_at"], row["first_task_at"]),
        },
    }


def _f(x: Any) -> str:
    return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def report(data: dict[str, Any]) -> None:
    rounds = data["rounds"]
    print(
        table(
            ["round", "status", "judgements", *(f"{s} s" for s in STAGES), "start→first task s"],
            [
                [r["round"], r["status"], r["judgements"]]
                + [r["latency"][s] for s in (*STAGES, "start_to_first_task")]
                for r in rounds
            ],
            title="Web loop: stage latencies (tiny CPU models)",
        )
    )
    package = data.get("package_reference") or {}
    ref = {r["round"]: r for r in package.get("rounds") or []}
    sha = str((package.get("commit") or {}).get("sha"))[:10]
    rows = []
    # π_0's held-out figures are round 1's other side; π_r's its own round's policy side.
    web = {0: rounds[0]["previous_policy"]} if rounds else {}
    web.update({r["round"]: r["policy"] for r in rounds})
    by_round = {r["round"]: r for r in rounds}
    for number in sorted(set(web) | set(ref)):
        mine, theirs, r = web.get(number) or {}, ref.get(number, {}), by_round.get(number, {})
        cats = mine.get("per_category") or {}
        rows.append(
            [
                f"π{number}",
                _f(mine.get("hallucination_rate")),
                _f(theirs.get("hallucination_rate")),
                " ".join(_f(cats.get(c)) for c in CATEGORIES),
                " ".join(_f((theirs.get("per_category") or {}).get(c)) for c in CATEGORIES),
                _f(r.get("human_win_rate")),
                _f(theirs.get("win_rate_vs_initial")),
                f"{_f(r.get('reward_accuracy'))} / {_f(r.get('reward_accuracy_without_facts'))}",
                f"{_f(theirs.get('reward_accuracy'))} / "
                f"{_f(theirs.get('reward_accuracy_without_facts'))}",
            ]
        )
    print(
        table(
            [
                "policy",
                "halluc. web",
                "halluc. package",
                "web obj attr count rel",
                "package obj attr count rel",
                "web human win vs π_{r-1}",
                "package win vs π0",
                "web reward acc facts / blind",
                "package reward acc facts / blind",
            ],
            rows,
            title="Held-out hallucination through the web app and in the package",
        )
    )
    if package:
        print(f"Package bench: {package.get('how')}, commit {sha}, same settings.")
    else:
        print("Package bench: not compared (--package skip).")


if __name__ == "__main__":
    raise SystemExit(main())
