"""Drive a project unattended, through the REST API, with oracle annotators.

For demos, load and end-to-end tests. A server must be running, and a worker where rounds run
(`make demo` runs both). The annotators follow the oracle of the project's kind
(the kind's `oracle_annotator`): on a pairwise project a hidden preference
(`--oracle`), on a hallucination project built from `training.scenes` (the demo's "Shapes" one) a
person who checks every claim against the picture, marks the false ones as spans and corrects a
share of the answers (`--correction-share`), by fixing the made-up words of each false claim as
RLHF-V's annotators do or by deleting its sentence (`--correction-style`).

Where the project's online loop is enabled the command runs `--rounds` rounds and prints each
round's figures; otherwise the annotators work the queue dry once and it prints what the oracle
reports (for hallucination, the rates per response source). Without --project it sets up a
pairwise loop project on tiny CPU models itself: π_0 is the oracle's supervised warm start, the
reward ensemble sits on π_0's backbone, and the first batch of tasks holds two π_0 samples per
prompt. With `--kind hallucination` it sets up a hallucination loop project of drawn scenes
instead (annotation/services/simulation_scenes.py), on the vision-language π_0 given by
`--base-policy`.
"""

import random
import secrets
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from annotation import selectors, services
from annotation.errors import InvalidInput
from annotation.kinds.hallucination.simulation import CORRECTION_STYLES, DEFAULT_CORRECTION_STYLE
from annotation.loop import SELECTIONS, LoopSettings
from annotation.models import Project
from annotation.services.simulation import (
    TINY_LOOP,
    OracleAnnotator,
    oracle_annotator,
    oracle_project_setup,
)
from annotation.services.simulation_scenes import scene_project_setup, scene_prompts
from annotation.services.tokens import token_issue


class Api:
    def __init__(self, base: str, token: str, timeout: float = 60.0):
        self.client = httpx.Client(
            base_url=base.rstrip("/"), headers={"Authorization": f"Token {token}"}, timeout=timeout
        )

    def call(
        self, method: str, path: str, *, expect: tuple[int, ...] = (200, 201), **kwargs: Any
    ) -> httpx.Response:
        response = self.client.request(method, path, **kwargs)
        if response.status_code not in expect:
            raise CommandError(
                f"{method} {path} answered {response.status_code}: {response.text[:300]}"
            )
        return response


class Command(BaseCommand):
    help = (
        "Oracle annotators judge a project through the REST API, as people would: on a pairwise "
        "project they follow a hidden preference (--oracle); on a hallucination project built "
        "from training.scenes (the demo's) they mark every false claim as a span with its "
        "category, choose the answer with fewer, and correct a share of them "
        "(--correction-share, --correction-style). Where the project's loop is enabled they "
        "label --rounds rounds and the rounds' figures are printed; otherwise they work the "
        "queue dry once and the kind's figures are printed. Without --project a pairwise loop "
        "project is created."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--project",
            type=int,
            help="an existing project of any kind that has an oracle (pairwise, hallucination); "
            "without it a pairwise loop project is created",
        )
        parser.add_argument(
            "--kind",
            choices=["pairwise", "hallucination"],
            default="pairwise",
            help="new project only: a pairwise loop on the --oracle's task, or a hallucination "
            "loop on drawn scenes (needs --base-policy, a vision-language π_0)",
        )
        parser.add_argument(
            "--annotators", type=int, default=4, help="simulated annotators working in parallel"
        )
        parser.add_argument(
            "--oracle",
            default="warm-words",
            help="pairwise: the hidden preference the annotators follow",
        )
        parser.add_argument(
            "--correction-share",
            type=float,
            default=0.25,
            help="hallucination: the share of tasks (0 to 1) where the annotator also corrects "
            "the worse answer (see --correction-style)",
        )
        parser.add_argument(
            "--correction-style",
            choices=CORRECTION_STYLES,
            default=DEFAULT_CORRECTION_STYLE,
            help="hallucination: how a correction is made: 'fix' changes only the made-up words "
            "of each false claim, as RLHF-V's annotators do (dense DPO then weighs just those "
            "tokens); 'delete' drops the false sentences",
        )
        parser.add_argument(
            "--seed", type=int, default=0, help="hallucination: which tasks get a correction"
        )
        parser.add_argument(
            "--rounds", type=int, default=2, help="rounds to run (projects with the loop enabled)"
        )
        parser.add_argument(
            "--url", default="http://127.0.0.1:8000", help="the running Tandem server"
        )
        parser.add_argument(
            "--prompts-per-round", type=int, default=48, help="new project only: prompts per round"
        )
        parser.add_argument(
            "--eval-prompts", type=int, default=16, help="new project only: held-out prompts"
        )
        parser.add_argument(
            "--warm-start-steps", type=int, default=250, help="new project only: SFT steps for π_0"
        )
        parser.add_argument(
            "--base-policy",
            help="new project only: use this π_0 (a path inside TANDEM_MODEL_ROOTS) instead of "
            "warm-starting one",
        )
        parser.add_argument(
            "--selection",
            choices=sorted(SELECTIONS),
            help="new project only: how each round picks the pairs it sends "
            f"(default {TINY_LOOP['selection']})",
        )
        parser.add_argument(
            "--trigger-judgements",
            type=int,
            help="new project with --trigger auto: fresh judgements that start a round "
            "(default 80%% of --prompts-per-round)",
        )
        parser.add_argument(
            "--trigger",
            choices=["manual", "auto"],
            default="manual",
            help="start rounds over the API, or let the judgement threshold do it",
        )
        parser.add_argument(
            "--timeout", type=float, default=1800, help="give up after this many seconds"
        )

    def handle(self, *args, **options):
        from training.oracles import oracle_named

        oracle = None
        if not options["project"] and options["kind"] == "hallucination":
            if not options["base_policy"]:
                raise CommandError(
                    "--kind hallucination needs --base-policy: a vision-language π_0 inside "
                    "TANDEM_MODEL_ROOTS (bench/web_hallucination_loop.py builds one)"
                )
        elif not options["project"]:
            try:
                oracle = oracle_named(options["oracle"])
            except ValueError as exc:
                raise CommandError(str(exc)) from None
        deadline = time.monotonic() + options["timeout"]
        staff = _simulator_user()
        api = Api(options["url"], token_issue(user=staff, name="simulate_annotators")[1])
        try:
            api.call("GET", "/api/v1/projects")
        except httpx.HTTPError as exc:
            raise CommandError(
                f"no Tandem server answers at {options['url']} ({exc}); start one with `make demo`"
            ) from None

        project_id = options["project"] or self._create_project(api, oracle, options)
        project = Project.objects.filter(pk=project_id).first()
        if project is None:
            raise CommandError(f"no project {project_id}")
        try:
            annotator = oracle_annotator(project=project, options=options)
        except InvalidInput as exc:
            raise CommandError(exc.message) from None
        tokens = self._annotators(api, project_id, options["annotators"])

        if not LoopSettings.for_display(project).enabled:
            # No rounds to wait for: the queue as it stands is the whole job.
            labelled = self._label_queue(options["url"], project_id, tokens, annotator, deadline)
            self.stdout.write(
                f"project {project_id} ({project.kind}, loop off): "
                f"annotators gave {labelled} judgements"
            )
            for line in annotator.report():
                self.stdout.write(line)
            return
        for number in range(1, options["rounds"] + 1):
            labelled = self._label_queue(options["url"], project_id, tokens, annotator, deadline)
            self.stdout.write(f"round {number}: annotators gave {labelled} judgements")
            if options["trigger"] == "manual":
                self._wait_settled(project_id, deadline)
                api.call("POST", f"/api/v1/projects/{project_id}/rounds", expect=(201,))
            self._wait_for_round(api, project_id, number, deadline)
        # The last round's evaluation tasks carry its headline number: label them too.
        self._label_queue(options["url"], project_id, tokens, annotator, deadline)
        rounds = api.call("GET", f"/api/v1/projects/{project_id}/rounds").json()
        self._print_table(project_id, rounds)

    def _create_project(self, api: Api, oracle: Any, options: dict[str, Any]) -> int:
        base = options["base_policy"]
        if base is None and options["kind"] == "pairwise":
            self.stdout.write(
                f"building π0 by supervised warm start ({options['warm_start_steps']} steps)"
            )
        auto = options["trigger"] == "auto"
        try:
            project = self._setup(oracle, options, base, auto)
        except InvalidInput as exc:
            raise CommandError(
                f"{exc.message} (a --base-policy path must lie in TANDEM_MODEL_ROOTS)"
            ) from None
        self.stdout.write(f"project {project.pk}: {project.tasks.count()} round-0 tasks from π0")
        return project.pk

    def _setup(self, oracle: Any, options: dict[str, Any], base: str | None, auto: bool) -> Project:
        trigger = (
            options["trigger_judgements"] or max(1, int(0.8 * options["prompts_per_round"]))
            if auto
            else 0
        )
        if options["kind"] == "hallucination":
            # One slice of training prompts per round and one more for round 0, all distinct.
            rng = random.Random(options["seed"])
            size = options["prompts_per_round"]
            train = scene_prompts(rng, (options["rounds"] + 1) * size, "train-")
            return scene_project_setup(
                creator=_simulator_user(),
                policy=Path(base),
                train=train,
                evaluation=scene_prompts(rng, options["eval_prompts"], "eval-"),
                prompts_per_round=size,
                name=f"Shapes loop {time.strftime('%Y-%m-%d %H:%M:%S')}",
                trigger_judgements=trigger,
                loop={"selection": options["selection"]} if options["selection"] else None,
                seed=options["seed"],
            )
        return oracle_project_setup(
            creator=_simulator_user(),
            oracle_name=oracle.name,
            name=f"Oracle loop ({oracle.name}) {time.strftime('%Y-%m-%d %H:%M:%S')}",
            base_policy=Path(base) if base else None,
            warm_start_steps=options["warm_start_steps"],
            prompts_per_round=options["prompts_per_round"],
            eval_prompts=options["eval_prompts"],
            trigger_judgements=trigger,
            selection=options["selection"],
        )

    def _annotators(self, api: Api, project_id: int, count: int) -> list[str]:
        tokens = []
        for _ in range(count):
            username, password = f"oracle-{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(16)
            api.call(
                "POST",
                "/api/v1/users",
                json={"username": username, "password": password},
                expect=(201,),
            )
            api.call(
                "POST",
                f"/api/v1/projects/{project_id}/members",
                json={"username": username, "role": "annotator"},
                expect=(201,),
            )
            token = api.call(
                "POST", "/api/v1/auth/token", json={"username": username, "password": password}
            ).json()["token"]
            tokens.append(token)
        return tokens

    def _label_queue(
        self,
        url: str,
        project_id: int,
        tokens: list[str],
        annotator: OracleAnnotator,
        deadline: float,
    ) -> int:
        """Every annotator works the queue until it answers 204; returns how many judgements they gave.

        Tasks whose outcomes a worker is still simulating are not leased yet (a 204 then means
        "not yet", not "done"): the annotators start once none is waiting.
        """
        self._wait_for_outcomes(project_id, deadline)
        counts = [0] * len(tokens)
        errors: list[BaseException] = []

        def work(i: int, token: str) -> None:
            api = Api(url, token)
            try:
                while time.monotonic() < deadline:
                    lease = api.call(
                        "POST", f"/api/v1/projects/{project_id}/assignments", expect=(201, 204)
                    )
                    if lease.status_code == 204:
                        return
                    body = lease.json()
                    # A kind with phases (hindsight): the lease names the phase due; after each
                    # judgement GET the assignment for the next phase and what it may now see
                    # (the outcomes), as a person's client does.
                    phase, task = body.get("phase"), body["task"]
                    while True:
                        key = f"sim-{body['id']}" + (f"-{phase}" if phase else "")
                        api.call(
                            "POST",
                            f"/api/v1/assignments/{body['id']}/judgement",
                            json=annotator.answer({**task, "phase": phase} if phase else task),
                            headers={"Idempotency-Key": key},
                        )
                        counts[i] += 1
                        if not phase:
                            break
                        detail = api.call("GET", f"/api/v1/assignments/{body['id']}").json()
                        phase, task = detail["phase"], detail["task"]
                        if not phase:
                            break
            except InvalidInput as exc:  # e.g. a task the oracle cannot judge
                errors.append(CommandError(exc.message))
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)
            finally:
                # An annotator that reads the database (the scene oracle) opened this thread's
                # own connection: close it, or it outlives the command.
                connections.close_all()

        threads = [threading.Thread(target=work, args=(i, t)) for i, t in enumerate(tokens)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise CommandError(f"an annotator failed: {errors[0]}")
        return sum(counts)

    def _wait_for_outcomes(self, project_id: int, deadline: float) -> None:
        waiting = selectors.tasks_awaiting_outcomes(project_id=project_id)
        if waiting:
            self.stdout.write(f"  waiting for the outcomes of {waiting} tasks to be simulated")
        while waiting and time.monotonic() < deadline:
            time.sleep(0.5)
            waiting = selectors.tasks_awaiting_outcomes(project_id=project_id)
        if waiting:
            raise CommandError(
                f"{waiting} tasks still wait for their outcomes: is a worker running, and does "
                "the project name a simulator (kind_settings.simulator_model)?"
            )

    def _wait_settled(self, project_id: int, deadline: float) -> None:
        """Waits until every judgement of the project is below the export horizon.

        A round reads judgements through the exactly-once export, which stops at the oldest
        transaction still running anywhere on the Postgres server (annotation/selectors/export.py):
        started the moment the queue runs dry, a round on a busy server would train on fewer
        judgements than the annotators gave, or refuse to start for want of them.
        """
        from django.db import connection

        query = (
            "SELECT coalesce(max(commit_seq), 0), "
            "pg_snapshot_xmin(pg_current_snapshot())::text::bigint "
            "FROM annotation_judgement WHERE project_id = %s"
        )
        waited = time.monotonic()
        while time.monotonic() < deadline:
            with connection.cursor() as cursor:
                cursor.execute(query, [project_id])
                newest, horizon = cursor.fetchone()
            if newest < horizon:
                if time.monotonic() - waited > 5:
                    self.stdout.write(
                        f"  waited {time.monotonic() - waited:.0f}s for other transactions on "
                        "the database server to end"
                    )
                return
            time.sleep(0.2)
        raise CommandError("the judgements did not settle in time (a transaction left open?)")

    def _wait_for_round(self, api: Api, project_id: int, number: int, deadline: float) -> None:
        shown = ""
        while time.monotonic() < deadline:
            rounds = api.call("GET", f"/api/v1/projects/{project_id}/rounds").json()
            current = next((r for r in rounds if r["number"] == number), None)
            if current is not None:
                stage = next((s for s in current["stages"] if s["status"] != "succeeded"), None)
                line = f"  round {number}: {current['status']}" + (
                    f" · {stage['stage']} {stage['progress_step']}/{stage['progress_total']}"
                    if stage
                    else ""
                )
                if line != shown:
                    self.stdout.write(line)
                    shown = line
                if current["status"] == "succeeded":
                    return
                if current["status"] == "failed":
                    raise CommandError(f"round {number} failed: {current['error']}")
            time.sleep(1.0)
        raise CommandError(
            f"round {number} did not finish in time (is a worker running on the loop's queue?)"
        )

    def _print_table(self, project_id: int, rounds: list[dict[str, Any]]) -> None:
        def fmt(value: Any) -> str:
            return (
                "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)
            )

        self.stdout.write(f"\nproject {project_id}")
        self.stdout.write(
            f"{'round':>5} {'status':>10} {'judgements':>10} {'reward_acc':>10} {'win_rate':>9} {'95% CI':>15} {'n':>4}"
        )
        for r in rounds:
            ci = (
                f"[{r['win_rate_ci'][0]:.2f}, {r['win_rate_ci'][1]:.2f}]"
                if r["win_rate_ci"]
                else "-"
            )
            self.stdout.write(
                f"{r['number']:>5} {r['status']:>10} {r['judgements']:>10} {fmt(r['reward_accuracy']):>10} "
                f"{fmt(r['win_rate']):>9} {ci:>15} {r['win_rate_n']:>4}"
            )


def _simulator_user():
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.filter(username="simulator").first()
    if user is None:
        user = services.user_create(
            username="simulator", password=secrets.token_urlsafe(24), is_staff=True
        )
    return user
