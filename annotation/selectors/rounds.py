"""Reads of the online loop: rounds with their metrics, model versions, annotator throughput."""

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from django.contrib.auth.models import AbstractUser
from django.db.models import Count, Exists, OuterRef, QuerySet
from django.db.models.functions import TruncMinute

from ..errors import InvalidInput, NotFound
from ..kinds import kind_for
from ..kinds.base import Kind
from ..loop import project_artifact_root
from ..models import Judgement, ModelVersion, Project, Round, TaskResponse, TrainingRun
from . import EXPORT, access_project, project_visible_to
from .round_data import loop_hooks

Z_95 = 1.959963984540054


def wilson_interval(successes: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a proportion (ties count as half a win, so successes may be fractional)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class WinRate:
    wins: float
    n: int

    @property
    def rate(self) -> float | None:
        return self.wins / self.n if self.n else None

    @property
    def interval(self) -> tuple[float, float] | None:
        return wilson_interval(self.wins, self.n) if self.n else None


def human_win_rates(*, project: Project) -> dict[int, WinRate]:
    """Per round: how often humans preferred π_r's answer over π_{r-1}'s in the blind evaluation tasks.

    How one judgement counts (a win, a loss, half of each) is the project kind's loop hook.
    """
    hooks = loop_hooks(project.kind)
    if hooks is None:
        return {}  # the loop never served this project: it has no evaluation tasks
    policy_of_round = dict(
        ModelVersion.objects.filter(project=project, kind=ModelVersion.Kind.POLICY).values_list(
            "round", "id"
        )
    )
    new_position: dict[int, int] = {}
    slots = TaskResponse.objects.filter(
        task__project=project, task__purpose="evaluation"
    ).values_list("task_id", "task__round", "position", "response__model_version_id")
    for task_id, round_number, position, version_id in slots:
        if version_id is not None and version_id == policy_of_round.get(round_number):
            new_position[task_id] = position
    totals: dict[int, list[float]] = {}
    for task_id, round_number, answer in Judgement.objects.filter(
        project=project, task__purpose="evaluation", phase=_final_phase(project)
    ).values_list("task_id", "task__round", "answer"):
        if task_id not in new_position:
            continue
        score = hooks.evaluation_score(answer, new_position=new_position[task_id])
        totals.setdefault(round_number, [0.0, 0])
        totals[round_number][0] += score
        totals[round_number][1] += 1
    return {r: WinRate(wins=w, n=int(n)) for r, (w, n) in totals.items()}


@dataclass(frozen=True)
class RoundRow:
    number: int
    status: str
    trigger: str
    judgements: int
    reward_accuracy: float | None
    win_rate: float | None
    win_rate_ci: tuple[float, float] | None
    win_rate_n: int
    policy_version: str | None
    policy_version_id: int | None
    error: str
    started_at: datetime | None
    finished_at: datetime | None
    runs: list[TrainingRun]


def rounds_of(*, project: Project) -> list[RoundRow]:
    """The project's rounds, oldest first, with their metrics and stage runs (three queries)."""
    rates = human_win_rates(project=project)
    rounds = list(
        Round.objects.filter(project=project)
        .select_related("policy_version")
        .prefetch_related("runs")
        .order_by("number")
    )
    rows = []
    for r in rounds:
        rate = rates.get(r.number, WinRate(0.0, 0))
        rows.append(
            RoundRow(
                number=r.number,
                status=r.status,
                trigger=r.trigger,
                judgements=r.judgements,
                reward_accuracy=r.reward_accuracy,
                win_rate=rate.rate,
                win_rate_ci=rate.interval,
                win_rate_n=rate.n,
                policy_version=r.policy_version.name if r.policy_version else None,
                policy_version_id=r.policy_version_id,
                error=r.error,
                started_at=r.started_at,
                finished_at=r.finished_at,
                runs=list(r.runs.all()),
            )
        )
    return rows


def judgements_per_round(*, project: Project) -> dict[int, int]:
    """Human judgements collected on each round's tasks (round 0 = imported tasks); a kind with
    phases counts one per completed judgement (its last phase's row), as the tasks count them."""
    return dict(
        Judgement.objects.filter(project=project, phase=_final_phase(project))
        .values_list("task__round")
        .annotate(n=Count("id"))
        .order_by("task__round")
        .values_list("task__round", "n")
    )


def throughput(*, project: Project, minutes: int = 60) -> list[tuple[datetime, int]]:
    """Judgements per minute over the last `minutes` minutes that saw any."""
    rows = (
        Judgement.objects.filter(project=project)
        .annotate(minute=TruncMinute("created_at"))
        .values_list("minute")
        .annotate(n=Count("id"))
        .order_by("-minute")
        .values_list("minute", "n")[:minutes]
    )
    return list(reversed(list(rows)))


def active_runs(*, project: Project) -> QuerySet[TrainingRun]:
    return (
        TrainingRun.objects.filter(round__project=project)
        .exclude(status=TrainingRun.Status.SUCCEEDED)
        .select_related("round")
        .order_by("round__number", "position")
    )


def models_visible_to(
    *, user: AbstractUser, project_id: int | None = None
) -> QuerySet[ModelVersion]:
    """Model versions of the projects the user may export from."""
    if project_id is not None:
        project, _ = access_project(user=user, project_id=project_id, roles=EXPORT)
        return ModelVersion.objects.filter(project=project).order_by("project_id", "kind", "round")
    projects = project_visible_to(user=user)
    if not user.is_staff:
        projects = projects.filter(memberships__user=user, memberships__role__in=EXPORT)
    return ModelVersion.objects.filter(project__in=projects).order_by("project_id", "kind", "round")


def access_model(*, user: AbstractUser, model_id: int) -> ModelVersion:
    version = ModelVersion.objects.select_related("project").filter(pk=model_id).first()
    if version is None:
        raise NotFound("model version not found")
    access_project(user=user, project_id=version.project_id, roles=EXPORT)
    return version


def model_artifact(*, version: ModelVersion) -> Path | None:
    """The folder a download of `version` may serve, or None.

    Only what the project's own runs published: a trained version (round 1 on; round 0 is the
    base model, a hub id or a path in a model root, never served) whose path resolves, symlinks
    and '..' followed, to a direct child of the project's own artifact folder that holds the
    manifest training.artifacts writes last. A stored path pointing anywhere else serves nothing.
    """
    from training.artifacts import is_published

    if version.round < 1 or not version.artifact_path.startswith("/"):
        return None
    try:
        root = project_artifact_root(version.project_id).resolve(strict=True)
        path = Path(version.artifact_path).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):
        return None
    if path.parent != root or path.name.startswith(".") or not path.is_dir():
        return None
    return path if is_published(path) else None


# --- what a kind measures of the loop's policies ------------------------------------------------

CHUNK = 2000  # judgements fetched per round trip of the payload stream


class JudgedAnswers(NamedTuple):
    """One judgement of a task that shows at least one model version's answer."""

    purpose: str  # the task's: "label", or "evaluation" for the blind π_r-vs-π_{r-1} tasks
    payload: dict[str, Any]
    slots: tuple[tuple[int, int | None], ...]  # (response id, model version id) by position


def _versioned() -> Exists:
    """Whether the outer row's task shows at least one model version's answer."""
    return Exists(
        TaskResponse.objects.filter(
            task_id=OuterRef("task_id"), response__model_version__isnull=False
        )
    )


_Slot = tuple[int, int | None, float | None]  # response id, model version id, true utility


def _versioned_slots(project: Project) -> dict[int, dict[int, _Slot]]:
    """{task id: {position: (response id, model version id, response's true utility)}} of the
    tasks showing a model version's answer (a few numbers per task)."""
    slots: dict[int, dict[int, _Slot]] = {}
    for task_id, position, response_id, version_id, utility in (
        TaskResponse.objects.filter(task__project=project)
        .filter(_versioned())
        .values_list(
            "task_id",
            "position",
            "response_id",
            "response__model_version_id",
            "response__true_utility",
        )
        .iterator(chunk_size=CHUNK)
    ):
        slots.setdefault(task_id, {})[position] = (response_id, version_id, utility)
    return slots


def judged_answers(*, project: Project) -> Iterator[JudgedAnswers]:
    """Every judgement of a task showing a model version's answer, streamed in task order.

    Two queries, run on the first `next`: a caller that never iterates costs none. The slots of
    those tasks are held (a few integers per task); the payloads stream in chunks.
    """
    slots = _versioned_slots(project)
    for task_id, purpose, payload in (
        Judgement.objects.filter(project=project)
        .filter(_versioned())
        .order_by("task_id", "id")
        .values_list("task_id", "task__purpose", "payload")
        .iterator(chunk_size=CHUNK)
    ):
        shown = slots.get(task_id)
        if shown:  # a task made after the slots were read waits for the next page load
            yield JudgedAnswers(purpose, payload, tuple(shown[p][:2] for p in sorted(shown)))


class PhasedAnswers(NamedTuple):
    """One phase's row of a judgement of a task showing a model version's answer (a kind with
    phases stores one row per phase): what `JudgedAnswers` holds, and what pairs phases up."""

    purpose: str
    payload: dict[str, Any]
    slots: tuple[tuple[int, int | None], ...]
    task_id: int
    annotator_id: int
    phase: str
    task_round: int  # 0: a task the import made, its slots the line's responses in line order
    prompt_metadata: dict[str, Any]  # the prompt's import metadata (a kind's facts about it)
    # Each shown response's `true_utility` by position (None: unknown), as an exact world model
    # wrote it with the outcome.
    slot_utilities: tuple[float | None, ...] = ()


def phased_answers(*, project: Project) -> Iterator[PhasedAnswers]:
    """Every phase row of a task showing a model version's answer, streamed in (task, annotator,
    phase, id) order, so one annotator's phases of one task come together; two queries, run on
    the first `next`, as `judged_answers`."""
    slots = _versioned_slots(project)
    for task_id, purpose, payload, annotator_id, phase, task_round, metadata in (
        Judgement.objects.filter(project=project)
        .filter(_versioned())
        .order_by("task_id", "annotator_id", "phase", "id")
        .values_list(
            "task_id",
            "task__purpose",
            "payload",
            "annotator_id",
            "phase",
            "task__round",
            "task__prompt__metadata",
        )
        .iterator(chunk_size=CHUNK)
    ):
        shown = slots.get(task_id)
        if shown:  # a task made after the slots were read waits for the next page load
            ordered = [shown[p] for p in sorted(shown)]
            yield PhasedAnswers(
                purpose,
                payload,
                tuple(slot[:2] for slot in ordered),
                task_id,
                annotator_id,
                phase,
                task_round,
                metadata if isinstance(metadata, dict) else {},
                tuple(slot[2] for slot in ordered),
            )


def _kind_of(project: Project) -> Kind | None:
    try:
        return kind_for(project.kind)
    except InvalidInput:  # a kind not registered (any more) measures nothing
        return None


def _final_phase(project: Project) -> str:
    """The phase of the row that completes a judgement: the kind's last ("" without phases). A
    win or a count is taken from it alone, never from an earlier phase's row as well."""
    kind = _kind_of(project)
    return kind.phases[-1] if kind is not None and kind.phases else ""


def kind_round_stats(*, project: Project) -> Any | None:
    """The project kind's figures of the loop's policies (its `round_stats` hook), or None when
    the kind measures none (pairwise: no query is made then).

    The hook gets the judgements lazily (`judged_answers`; `phased_answers`, every phase's row,
    for a kind with phases), the policies as (round, model version
    id, name) and the project's kind settings; what it returns answers `policy_json(r)`,
    `previous_policy_json(r)` and `panel(win_rates)`.
    """
    kind = _kind_of(project)
    if kind is None:
        return None
    policies = (
        ModelVersion.objects.filter(project=project, kind=ModelVersion.Kind.POLICY)
        .order_by("round")
        .values_list("round", "id", "name")
    )  # a lazy QuerySet: read only if the hook iterates it
    # A kind with phases gets every phase's row, with what pairs them up; others one row each.
    judged = phased_answers(project=project) if kind.phases else judged_answers(project=project)
    return kind.round_stats(
        judged,
        policies=policies,
        settings=kind.settings_of(project.kind_settings),
    )


@dataclass(frozen=True)
class KindRoundsPanel:
    """The kind's panel on the loop dashboard: its template and the template's context."""

    template: str
    context: dict[str, Any]


def kind_rounds_panel(*, project: Project, win_rates: Mapping[int, str]) -> KindRoundsPanel | None:
    """The loop dashboard's kind panel (hallucination rates per round, say), or None for a kind
    without one; `win_rates` holds each round's human win rate as the rounds table writes it."""
    kind = _kind_of(project)
    if kind is None or not kind.round_stats_template:
        return None
    stats = kind_round_stats(project=project)
    if stats is None:
        return None
    return KindRoundsPanel(kind.round_stats_template, stats.panel(win_rates))


def round_payload(row: RoundRow, kind_stats: Any | None = None) -> dict[str, Any]:
    """The REST shape of a round (fields may be added, names never changed).

    `kind_stats` is `kind_round_stats`'s answer: with it, `policy_stats` holds the kind's figures
    of π_r's answers and `previous_policy_stats` those of π_{r-1}'s, the other side of the round's
    blind evaluation (π_0's in round 1); both are null for a kind that measures none.
    """
    return {
        "number": row.number,
        "status": row.status,
        "judgements": row.judgements,
        "reward_accuracy": row.reward_accuracy,
        "win_rate": row.win_rate,
        "win_rate_ci": list(row.win_rate_ci) if row.win_rate_ci else None,
        "win_rate_n": row.win_rate_n,
        "policy_version": row.policy_version_id,
        "trigger": row.trigger,
        "error": row.error,
        "started_at": row.started_at.isoformat() if row.started_at else None,
        "finished_at": row.finished_at.isoformat() if row.finished_at else None,
        "stages": [
            {
                "stage": run.stage,
                "status": run.status,
                "progress_step": run.progress_step,
                "progress_total": run.progress_total,
                "loss": run.loss,
                "error": run.error,
            }
            for run in row.runs
        ],
        "policy_stats": kind_stats.policy_json(row.number) if kind_stats else None,
        "previous_policy_stats": kind_stats.previous_policy_json(row.number)
        if kind_stats
        else None,
    }
