"""Reads of the online-loop dashboard: the rounds, the series its charts draw and the jobs to watch.

The rules stay in `selectors.rounds`; this composes them into what one screen shows, in a fixed
number of queries whatever the number of rounds.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.utils import timezone

from ..charts import Bar, Point
from ..loop import LoopSettings
from ..models import Project, Round, TrainingRun
from .rounds import RoundRow, active_runs, judgements_per_round, rounds_of, throughput

THROUGHPUT_MINUTES = 60


@dataclass(frozen=True)
class JobRow:
    """One stage of a round as the jobs panel shows it."""

    round_number: int
    stage: str
    status: str
    attempts: int
    step: int
    total: int
    loss: float | None
    error: str
    heartbeat_age: float | None  # seconds since the worker last reported
    round_active: bool

    @property
    def percent(self) -> float | None:
        """Share of the stage done, or None while its size is unknown (queued, or not reported)."""
        if self.total <= 0:
            return None
        return 100.0 * min(self.step, self.total) / self.total

    @property
    def active(self) -> bool:
        return self.round_active and self.status in (
            TrainingRun.Status.QUEUED,
            TrainingRun.Status.RUNNING,
        )


def jobs_of(*, project: Project, now: datetime | None = None) -> list[JobRow]:
    """The stages of the queued or running round, and the failed stage of the latest round.

    Stages after a failed one stay queued forever and are left out; so are failures of rounds that
    a later round has superseded (the rounds table keeps their errors).
    """
    now = now or timezone.now()
    latest = (
        Round.objects.filter(project=project)
        .order_by("-number")
        .values_list("number", flat=True)
        .first()
    )
    rows = []
    for run in active_runs(project=project):
        round_active = run.round.status in Round.ACTIVE
        if not round_active and not (
            run.status == TrainingRun.Status.FAILED and run.round.number == latest
        ):
            continue
        rows.append(
            JobRow(
                round_number=run.round.number,
                stage=run.stage,
                status=run.status,
                attempts=run.attempts,
                step=run.progress_step,
                total=run.progress_total,
                loss=run.loss,
                error=run.error,
                heartbeat_age=(now - run.heartbeat_at).total_seconds()
                if run.heartbeat_at
                else None,
                round_active=round_active,
            )
        )
    return rows


def throughput_last_hour(
    *, project: Project, now: datetime | None = None, minutes: int = THROUGHPUT_MINUTES
) -> list[tuple[int, int]]:
    """(minutes ago, judgements) for each of the last `minutes` minutes, oldest first, zeros kept."""
    now = (now or timezone.now()).replace(second=0, microsecond=0)
    counts = {
        int((now - minute).total_seconds() // 60): n
        for minute, n in throughput(project=project, minutes=minutes)
    }
    return [(ago, counts.get(ago, 0)) for ago in range(minutes - 1, -1, -1)]


def _ci(row: RoundRow) -> str:
    low, high = row.win_rate_ci or (0.0, 1.0)
    return f"{row.win_rate:.2f} [{low:.2f}, {high:.2f}] n={row.win_rate_n}"


def win_rate_text(row: RoundRow) -> str:
    """'0.71 [0.58, 0.82] n=40', or '–' before any evaluation judgement."""
    return _ci(row) if row.win_rate is not None else "–"


def accuracy_points(rounds: list[RoundRow]) -> list[Point]:
    return [
        Point(
            label=str(r.number),
            value=r.reward_accuracy,
            note=f"round {r.number}: reward accuracy {r.reward_accuracy:.3f}"
            if r.reward_accuracy is not None
            else "",
        )
        for r in rounds
    ]


def win_rate_points(rounds: list[RoundRow]) -> list[Point]:
    points = []
    for r in rounds:
        low, high = r.win_rate_ci or (None, None)
        versus = f" ({r.policy_version})" if r.policy_version else ""
        points.append(
            Point(
                label=str(r.number),
                value=r.win_rate,
                low=low,
                high=high,
                note=f"round {r.number}{versus}: {_ci(r)}" if r.win_rate is not None else "",
            )
        )
    return points


def judgement_bars(rounds: list[RoundRow], per_round: dict[int, int]) -> list[Bar]:
    """One bar per round that exists or has judgements; round 0 are the imported tasks."""
    numbers = sorted({0, *per_round, *(r.number for r in rounds)})
    return [
        Bar(
            label=str(n),
            value=per_round.get(n, 0),
            note=f"{'imported tasks' if n == 0 else f'round {n}'}: {per_round.get(n, 0)} judgements",
        )
        for n in numbers
    ]


def throughput_bars(minutes: list[tuple[int, int]]) -> list[Bar]:
    return [
        Bar(
            label=("now" if ago == 0 else f"-{ago}") if ago % 10 == 0 else "",
            value=n,
            note=f"{ago} min ago: {n} judgement{'s' if n != 1 else ''}",
        )
        for ago, n in minutes
    ]


@dataclass(frozen=True)
class RoundLine:
    """A row of the rounds table: the round and what the page prints for it."""

    round: RoundRow
    win_rate: str
    duration: timedelta | None


@dataclass(frozen=True)
class LoopDashboard:
    settings: LoopSettings
    rounds: list[RoundRow]
    table: list[RoundLine]
    accuracy: list[Point]
    win_rates: list[Point]
    judgements: list[Bar]
    throughput: list[Bar]
    jobs: list[JobRow]

    @property
    def polling(self) -> bool:
        return any(job.active for job in self.jobs)

    @property
    def round_active(self) -> bool:
        return any(r.status in Round.ACTIVE for r in self.rounds)


def loop_dashboard(*, project: Project, now: datetime | None = None) -> LoopDashboard:
    now = now or timezone.now()
    rounds = rounds_of(project=project)
    return LoopDashboard(
        settings=LoopSettings.for_display(project),
        rounds=rounds,
        table=[
            RoundLine(round=r, win_rate=win_rate_text(r), duration=round_duration(r, now))
            for r in rounds
        ],
        accuracy=accuracy_points(rounds),
        win_rates=win_rate_points(rounds),
        judgements=judgement_bars(rounds, judgements_per_round(project=project)),
        throughput=throughput_bars(throughput_last_hour(project=project, now=now)),
        jobs=jobs_of(project=project, now=now),
    )


def round_duration(row: RoundRow, now: datetime | None = None) -> timedelta | None:
    """How long the round took, or has taken so far while it runs."""
    if row.started_at is None:
        return None
    return (row.finished_at or now or timezone.now()) - row.started_at
