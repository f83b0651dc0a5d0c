"""Test data made through the real services, never by writing rows by hand."""

import io
import json
from itertools import count

import factory
from django.contrib.auth import get_user_model

from annotation import services
from annotation.models import FeedbackKind

PASSWORD = "correct-horse-battery"
_serial = count(1)


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()

    username = factory.Sequence(lambda n: f"user{n}")
    is_staff = False

    @classmethod
    def _create(cls, model_class, username, is_staff=False, **kwargs):
        return services.user_create(username=username, password=PASSWORD, is_staff=is_staff)


class ProjectFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "annotation.Project"

    name = factory.Sequence(lambda n: f"Project {n}")
    kind = FeedbackKind.PAIRWISE
    overlap = 1
    lease_seconds = 600
    instructions = "Pick the more **helpful** answer."
    creator = factory.SubFactory(UserFactory, is_staff=True)

    @classmethod
    def _create(cls, model_class, creator, **kwargs):
        return services.project_create(creator=creator, **kwargs)


def pairwise_lines(n: int, *, start: int = 0, with_ids: bool = True) -> list[dict]:
    lines = []
    for i in range(start, start + n):
        line: dict = {
            "prompt": [
                {"role": "user", "content": f"Question {i}: what is {i} + {i}?"},
            ],
            "responses": [f"It is {2 * i}.", {"text": f"Maybe {2 * i + 1}.", "model": "guess-1"}],
        }
        if i % 3 == 0:
            line["prompt"] = [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"Hi, question {i}."},
                {"role": "assistant", "content": "Hello! Ask away."},
                {"role": "user", "content": f"What is {i} + {i}?"},
            ]
        if with_ids:
            line["id"] = f"ext-{i}-{next(_serial)}"
        lines.append(line)
    return lines


def jsonl(lines: list) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def import_tasks(project, n: int, *, user=None, start: int = 0):
    """Imports n pairwise tasks through the import service; returns the finished job."""
    body = jsonl(pairwise_lines(n, start=start))
    job = services.import_create(
        project=project, user=user or project.created_by, stream=io.BytesIO(body), size=len(body)
    )
    assert job.status == "done", job.errors
    return job


def wait_for_export_horizon(timeout: float = 30.0) -> None:
    """Waits until every judgement committed so far is older than the oldest running transaction.

    The export reads only up to that horizon (cluster-wide, so it is exactly-once); an unrelated
    transaction elsewhere on the server can hold it back for a moment, which is by design. Fails
    (AssertionError) after `timeout` seconds: a test that went on would export less than it
    expects and blame the export for a transaction someone forgot to close.
    """
    import time

    from django.db import connection

    deadline = time.monotonic() + timeout
    while True:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT coalesce(max(commit_seq), 0), pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
                " FROM annotation_judgement"
            )
            newest, horizon = cursor.fetchone()
        if newest < horizon:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"export horizon: after {timeout:g} s the oldest running transaction ({horizon}) is"
                f" still not past the newest committed judgement's commit_seq ({newest});"
                " a transaction left open holds it back"
            )
        time.sleep(0.05)
