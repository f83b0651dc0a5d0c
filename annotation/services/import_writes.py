"""Writing an import's validated lines: prompts, responses, tasks and their slots, in the caller's
transaction. On Postgres rows go in through COPY with ids drawn from the tables' sequences up
front, which is what lets 100,000 tasks land in seconds; elsewhere through bulk_create.
"""

import json
from collections.abc import Iterable

from django.db import connection, models
from django.utils import timezone

from ..kinds import kind_for
from ..models import Project, Prompt, Response, Task, TaskResponse
from .import_lines import ImportLine

_BATCH = 5000


def _reserve_ids(model: type[models.Model], count: int) -> list[int]:
    table = model._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)",
            [table, count],
        )
        return [row[0] for row in cursor.fetchall()]


def _copy_rows(model: type[models.Model], columns: list[str], rows: Iterable[tuple]) -> None:
    table = connection.ops.quote_name(model._meta.db_table)
    column_sql = ", ".join(connection.ops.quote_name(c) for c in columns)
    with connection.cursor() as cursor:
        with cursor.cursor.copy(f"COPY {table} ({column_sql}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)


def _write_postgres(project: Project, items: list[ImportLine]) -> None:
    now = timezone.now()
    prompt_ids = _reserve_ids(Prompt, len(items))
    with_tasks = [
        (item, pid) for item, pid in zip(items, prompt_ids, strict=True) if item.responses
    ]
    task_ids = _reserve_ids(Task, len(with_tasks))
    response_ids = iter(_reserve_ids(Response, sum(len(i.responses) for i in items)))
    response_rows, slot_rows = [], []
    for (item, prompt_id), task_id in zip(with_tasks, task_ids, strict=True):
        for position, (text, model) in enumerate(item.responses):
            response_id = next(response_ids)
            outcome, source = _outcome(item, position)
            response_rows.append((response_id, prompt_id, text, model, outcome, source, now))
            slot_rows.append((task_id, response_id, position))
    _copy_rows(
        Prompt,
        "id project_id messages external_id metadata image context hidden split created_at".split(),
        (
            (
                pid,
                project.pk,
                json.dumps(i.messages),
                i.external_id,
                json.dumps(i.metadata),
                i.image or "",
                json.dumps(i.context),
                json.dumps(i.hidden),
                i.split,
                now,
            )
            for pid, i in zip(prompt_ids, items, strict=True)
        ),
    )
    _copy_rows(
        Response,
        "id prompt_id text model_name outcome outcome_source created_at".split(),
        response_rows,
    )
    _copy_rows(
        Task,
        [
            "id",
            "project_id",
            "prompt_id",
            "kind",
            "round",
            "priority",
            "overlap",
            "judgement_count",
            "live_leases",
            "is_complete",
            "is_gold",
            "purpose",
            "ready",
            "created_at",
        ],
        (
            (
                tid,
                project.pk,
                pid,
                project.kind,
                0,
                0.0,
                project.overlap,
                0,
                0,
                False,
                False,
                "label",
                _ready(project, item),
                now,
            )
            for tid, (item, pid) in zip(task_ids, with_tasks, strict=True)
        ),
    )
    _copy_rows(TaskResponse, ["task_id", "response_id", "position"], slot_rows)
    # Fresh planner statistics: right after a bulk load the tables look empty to the planner, and
    # the lease and task queries would scan them until autovacuum caught up.
    with connection.cursor() as cursor:
        cursor.execute(
            "ANALYZE annotation_prompt, annotation_response, annotation_task, annotation_taskresponse"
        )


def _write_portable(project: Project, items: list[ImportLine]) -> None:
    for start in range(0, len(items), _BATCH):
        batch = items[start : start + _BATCH]
        prompts = Prompt.objects.bulk_create(
            Prompt(
                project=project,
                messages=i.messages,
                external_id=i.external_id,
                metadata=i.metadata,
                image=i.image or "",
                context=i.context,
                hidden=i.hidden,
                split=i.split,
            )
            for i in batch
        )
        responses = Response.objects.bulk_create(
            Response(
                prompt=p,
                text=text,
                model_name=model,
                outcome=_outcome(i, position)[0],
                outcome_source=_outcome(i, position)[1],
            )
            for p, i in zip(prompts, batch, strict=True)
            for position, (text, model) in enumerate(i.responses)
        )
        asked = [(p, i) for p, i in zip(prompts, batch, strict=True) if i.responses]
        tasks = Task.objects.bulk_create(
            Task(
                project=project,
                prompt=p,
                kind=project.kind,
                overlap=project.overlap,
                ready=_ready(project, item),
            )
            for p, item in asked
        )
        slots, cursor = [], iter(responses)
        for task, (_, item) in zip(tasks, asked, strict=True):
            for position in range(len(item.responses)):
                slots.append(TaskResponse(task=task, response=next(cursor), position=position))
        TaskResponse.objects.bulk_create(slots)


def _ready(project: Project, item: ImportLine) -> bool:
    """Whether the line's task may be leased at once: not while a kind that shows outcomes waits
    for them to be simulated (the outcome job opens the task once each response has one)."""
    return bool(item.outcomes) or not kind_for(project.kind).shows_outcomes


def _outcome(item: ImportLine, position: int) -> tuple[str, str]:
    """The imported outcome of a line's response and its source ("imported"), or ("", "") when
    the line has none (a simulator may write one later; it never overwrites an imported one)."""
    if not item.outcomes:
        return "", ""
    return item.outcomes[position], "imported"


def write_tasks(*, project: Project, items: list[ImportLine]) -> None:
    """Writes prompts, responses and tasks for validated lines. Caller owns the transaction."""
    if connection.vendor == "postgresql":
        _write_postgres(project, items)
    else:
        _write_portable(project, items)
