"""Annotators as threads against the embedded SQLite database that `make demo` runs on.

Run by tests/annotation/services/test_sqlite_path.py in a subprocess (pytest's own database is
Postgres): DATABASE_URL names a throwaway SQLite file. Prints one line, `RESULT {json}`, with what
the checks found; the test asserts on it.
"""

import json
import os
import random
import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings.dev")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection, connections  # noqa: E402

from annotation import services  # noqa: E402
from annotation.models import Assignment, Judgement, Role, Task  # noqa: E402
from tests.factories import ProjectFactory, UserFactory, import_tasks  # noqa: E402

ANNOTATORS = int(os.environ.get("SQLITE_ANNOTATORS", "6"))
TASKS = int(os.environ.get("SQLITE_TASKS", "30"))
OVERLAP = 2


OVERFULL_TASKS = """
SELECT t.id FROM annotation_task t
WHERE t.project_id = %s
  AND (SELECT count(*) FROM annotation_assignment a WHERE a.task_id = t.id AND a.status = 'leased')
    + (SELECT count(*) FROM annotation_judgement j WHERE j.task_id = t.id) > t.overlap
"""


def overfull_tasks(project_id: int) -> list[int]:
    """Tasks with more live leases plus judgements than their overlap (must stay empty).

    One statement, so both counts come from the same snapshot (two reads could count a lease and
    the judgement that replaced it). Leases last an hour here, so a leased row is a live one.
    """
    with connection.cursor() as cursor:
        cursor.execute(OVERFULL_TASKS, [project_id])
        return [row[0] for row in cursor.fetchall()]


def main() -> None:
    call_command("migrate", "--noinput", verbosity=0)
    project = ProjectFactory(overlap=OVERLAP, lease_seconds=3600)
    import_tasks(project, TASKS)
    users = [UserFactory() for _ in range(ANNOTATORS)]
    for user in users:
        services.membership_set(project=project, username=user.username, role=Role.ANNOTATOR)

    submitted: list[int] = []
    skipped: list[int] = []
    replays_equal: list[bool] = []
    violations: list[list[int]] = []
    failures: list[str] = []
    lock = threading.Lock()
    done = threading.Event()

    def annotate(user, seed: int) -> None:
        rng = random.Random(seed)
        try:
            while True:
                lease = services.assignment_lease(annotator=user, project=project)
                if lease is None:
                    if not Assignment.objects.filter(
                        project=project, status=Assignment.Status.LEASED
                    ).exists():
                        break
                    time.sleep(0.01)
                    continue
                if rng.random() < 0.1:
                    services.assignment_skip(assignment=lease)
                    with lock:
                        skipped.append(lease.pk)
                    continue
                key = f"{user.pk}-{lease.pk}"
                data = {"choice": rng.choice("AB"), "strength": rng.randint(1, 3)}
                judgement, created = services.judgement_submit(
                    assignment=lease, data=data, idempotency_key=key
                )
                # A retry of the same submission (a lost reply) returns the same judgement.
                again, created_again = services.judgement_submit(
                    assignment=lease, data=data, idempotency_key=key
                )
                with lock:
                    submitted.append(judgement.pk)
                    replays_equal.append(created and not created_again and again.pk == judgement.pk)
        except BaseException as exc:  # noqa: BLE001 - reported in RESULT
            failures.append(f"{type(exc).__name__}: {exc}")
        finally:
            connections.close_all()

    def watch() -> None:
        try:
            while not done.is_set():
                rows = overfull_tasks(project.pk)
                if rows:
                    violations.append(rows)
                time.sleep(0.005)
        except BaseException as exc:  # noqa: BLE001 - a dead watcher must fail the run
            failures.append(f"watcher: {type(exc).__name__}: {exc}")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=annotate, args=(u, i)) for i, u in enumerate(users)]
    watcher = threading.Thread(target=watch)
    watcher.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    done.set()
    watcher.join(timeout=30)

    stored = list(Judgement.objects.filter(project=project).values_list("id", flat=True))
    tasks = list(
        Task.objects.filter(project=project).values_list(
            "judgement_count", "is_complete", "live_leases"
        )
    )
    per_annotator_task = Counter(
        Judgement.objects.filter(project=project).values_list("annotator_id", "task_id")
    )
    print(
        "RESULT "
        + json.dumps(
            {
                "failures": failures[:5],
                "violations": violations[:3],
                "watcher_alive_at_end": watcher.is_alive(),
                "stuck_threads": sum(t.is_alive() for t in threads),
                "submitted": sorted(submitted),
                "stored": sorted(stored),
                "skipped": len(skipped),
                "skipped_stored": Assignment.objects.filter(
                    project=project, status=Assignment.Status.SKIPPED
                ).count(),
                "replays_equal": all(replays_equal) and len(replays_equal) == len(submitted),
                "tasks": tasks,
                "max_judgements_per_annotator_task": max(per_annotator_task.values(), default=0),
                "live_leases_left": Assignment.objects.filter(
                    project=project, status=Assignment.Status.LEASED
                ).count(),
                "overlap": OVERLAP,
                "task_count": TASKS,
            }
        )
    )


if __name__ == "__main__":
    main()
