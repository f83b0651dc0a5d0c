"""A real HTTP export dropped midway resumes from its last complete line: every judgement once."""

import pytest

from annotation import services
from annotation.models import Judgement, Role
from annotation.services.tokens import token_issue
from tests.factories import ProjectFactory, UserFactory, import_tasks, wait_for_export_horizon
from tests.webapp.export_client import complete_lines, open_export

pytestmark = pytest.mark.django_db(transaction=True)

CHOICES = ("A", "B", "tie", "A", "both_bad", "B")


@pytest.fixture
def judged(settings):
    """A project with 30 judgements (20 decisive) and a trainer's token; pages of 4 rows."""
    # Small pages, so the export crosses many keyset pages before and after the cut.
    settings.TANDEM_EXPORT_CHUNK = 4
    project = ProjectFactory(overlap=2)
    import_tasks(project, 15)
    annotators = [UserFactory(), UserFactory()]
    for user in annotators:
        services.membership_set(project=project, username=user.username, role=Role.ANNOTATOR)
    for i in range(30):
        user = annotators[i % 2]
        lease = services.assignment_lease(annotator=user, project=project)
        services.judgement_submit(
            assignment=lease, data={"choice": CHOICES[i % 6], "strength": 1}, idempotency_key=f"{i}"
        )
    trainer = UserFactory()
    services.membership_set(project=project, username=trainer.username, role=Role.TRAINER)
    _, token = token_issue(user=trainer, name="export")
    wait_for_export_horizon()
    return project, token


def judgement_ids(rows, shape):
    return [row["judgement_id"] if shape == "raw" else row["judgement_ids"][0] for row in rows]


def expected_ids(project, shape):
    judgements = Judgement.objects.filter(project=project)
    if shape == "pairs":
        judgements = judgements.filter(answer__in=["A", "B"])
    return sorted(judgements.values_list("id", flat=True))


@pytest.mark.parametrize("shape", ["pairs", "raw"])
@pytest.mark.parametrize("lines_before_the_cut", [0, 7])
def test_a_dropped_export_resumes_from_its_last_line_with_every_judgement_once(
    live_server, judged, shape, lines_before_the_cut
):
    project, token = judged
    stream = open_export(live_server.url, token, project_id=project.pk, shape=shape)
    assert stream.status == 200
    assert stream.headers["x-export-since"] == "c1.0.0"
    assert "x-export-cursor" not in stream.headers, "no end-of-export promise ahead of the body"
    assert (
        stream.headers["content-disposition"]
        == f'attachment; filename="project-{project.pk}-{shape}.jsonl"'
    )
    # Read the complete lines wanted plus half of the next one, then hang up.
    received = b""
    while received.count(b"\n") <= lines_before_the_cut:
        chunk = stream.read(64)
        assert chunk, "the export ended before the cut"
        received += chunk
    newline = -1
    for _ in range(lines_before_the_cut + 1):
        newline = received.index(b"\n", newline + 1)
    start = received.rfind(b"\n", 0, newline) + 1
    received = received[: start + (newline - start) // 2]  # mid-line
    stream.close()

    first = complete_lines(received)
    assert len(first) == lines_before_the_cut
    resume_from = first[-1]["cursor"] if first else stream.headers["x-export-since"]
    rest_stream = open_export(
        live_server.url, token, project_id=project.pk, shape=shape, since=resume_from
    )
    assert rest_stream.headers["x-export-since"] == resume_from
    rest_body = rest_stream.read_all()
    assert rest_body.endswith(b"\n")
    rest = complete_lines(rest_body)

    exported = judgement_ids(first, shape) + judgement_ids(rest, shape)
    assert len(exported) == len(set(exported)), "nothing twice"
    assert sorted(exported) == expected_ids(project, shape), "nothing lost"
    assert len(exported) == (20 if shape == "pairs" else 30)

    # Caught up: from the last line's cursor a clean export has no lines.
    caught_up = open_export(
        live_server.url, token, project_id=project.pk, shape=shape, since=rest[-1]["cursor"]
    )
    assert caught_up.read_all() == b""
    assert caught_up.headers["x-export-since"] == rest[-1]["cursor"]


def test_a_resumed_export_picks_up_judgements_submitted_meanwhile(live_server, judged):
    project, token = judged
    stream = open_export(live_server.url, token, project_id=project.pk, shape="raw")
    first = complete_lines(stream.read_all())
    # New tasks are judged after the export: resuming from its last line brings exactly those.
    import_tasks(project, 3)
    late = UserFactory()
    services.membership_set(project=project, username=late.username, role=Role.ANNOTATOR)
    added = []
    while lease := services.assignment_lease(annotator=late, project=project):
        judgement, _ = services.judgement_submit(
            assignment=lease, data={"choice": "A", "strength": 2}, idempotency_key=f"l{lease.pk}"
        )
        added.append(judgement.pk)
    assert len(added) == 3
    wait_for_export_horizon()
    rest = complete_lines(
        open_export(
            live_server.url, token, project_id=project.pk, shape="raw", since=first[-1]["cursor"]
        ).read_all()
    )
    assert [row["judgement_id"] for row in rest] == added


def test_a_cursor_that_is_not_one_is_refused(live_server, judged):
    project, token = judged
    stream = open_export(live_server.url, token, project_id=project.pk, shape="raw", since="c1.9")
    assert stream.status == 400
    assert b'"since"' in stream.read_all()
