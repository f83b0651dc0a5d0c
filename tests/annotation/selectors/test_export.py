import json
import random
import threading
from dataclasses import astuple

import pytest
from django.db import connections, transaction

from annotation import services
from annotation.errors import InvalidInput
from annotation.models import Judgement, Role
from annotation.selectors.export import Position, annotator_pseudonym
from annotation.selectors.export import export_judgements as _export_judgements
from tests.factories import ProjectFactory, UserFactory, import_tasks, wait_for_export_horizon

pytestmark = pytest.mark.django_db(transaction=True)


def export_judgements(**kwargs):
    wait_for_export_horizon()
    return _export_judgements(**kwargs)


def make_project(n_tasks=20, overlap=1, annotators=2):
    project = ProjectFactory(overlap=overlap)
    import_tasks(project, n_tasks)
    users = [UserFactory() for _ in range(annotators)]
    for user in users:
        services.membership_set(project=project, username=user.username, role=Role.ANNOTATOR)
    return project, users


def judge(project, user, choice="A", strength=2, key=None):
    lease = services.assignment_lease(annotator=user, project=project)
    judgement, _ = services.judgement_submit(
        assignment=lease,
        data={"choice": choice, "strength": strength},
        idempotency_key=key or f"k{lease.pk}",
    )
    return judgement


def test_pairs_leave_out_ties_and_both_bad_but_raw_keeps_them():
    project, (alice, _) = make_project()
    a = judge(project, alice, "A", 1)
    judge(project, alice, "tie")
    judge(project, alice, "both_bad")
    b = judge(project, alice, "B", 3)
    pairs = list(export_judgements(project=project, shape="pairs", since=None).rows())
    assert [r["judgement_ids"] for r in pairs] == [[a.pk], [b.pk]]
    assert [r["margin"] for r in pairs] == [1.0, 3.0]
    assert pairs[0]["annotator"] == annotator_pseudonym(
        project_id=project.pk, user_id=alice.pk
    ) and alice.username not in json.dumps(pairs)
    raw = list(export_judgements(project=project, shape="raw", since=None).rows())
    assert [r["payload"]["choice"] for r in raw] == ["A", "tie", "both_bad", "B"]
    assert len(raw[0]["responses"]) == 2 and raw[0]["responses"][0]["text"]


def test_agreement_is_the_share_of_annotators_who_chose_the_same():
    project, users = make_project(n_tasks=1, overlap=3, annotators=3)
    for user, choice in zip(users, ["A", "A", "B"], strict=True):
        judge(project, user, choice)
    rows = list(export_judgements(project=project, shape="pairs", since=None).rows())
    assert sorted(r["agreement"] for r in rows) == [0.3333, 0.6667, 0.6667]


def test_successive_exports_return_each_judgement_once_in_a_stable_order():
    project, (alice, bob) = make_project()
    first_batch = [judge(project, alice).pk for _ in range(3)]
    first = export_judgements(project=project, shape="pairs", since=None, chunk=2)
    assert [r["judgement_ids"][0] for r in first.rows()] == first_batch
    second_batch = [judge(project, bob).pk for _ in range(4)]
    second = export_judgements(project=project, shape="pairs", since=first.cursor, chunk=3)
    assert [r["judgement_ids"][0] for r in second.rows()] == second_batch
    again = export_judgements(project=project, shape="pairs", since=first.cursor, chunk=3)
    assert [r["judgement_ids"][0] for r in again.rows()] == second_batch
    nothing = export_judgements(project=project, shape="pairs", since=second.cursor)
    assert list(nothing.rows()) == [] and nothing.cursor == second.cursor


def test_a_bad_cursor_is_a_clear_error():
    project, _ = make_project(n_tasks=1)
    for cursor in ("garbage", "c1.x.1", "c9.1.1", "c1.1"):
        with pytest.raises(InvalidInput):
            export_judgements(project=project, shape="pairs", since=cursor)
    with pytest.raises(InvalidInput):
        export_judgements(project=project, shape="csv", since=None)


def test_a_judgement_committed_during_an_export_is_exported_once_by_the_next_one():
    """The race the horizon exists for, made to happen: a transaction that inserted a judgement
    stays open across an export while a newer transaction commits; the held one commits after the
    export has handed out its cursors. Resuming from the last line's cursor picks up both, once."""
    project, (alice, bob) = make_project(n_tasks=5)
    before = judge(project, alice)
    wait_for_export_horizon()  # `before` is settled for good: the horizon only moves forward
    bob_lease = services.assignment_lease(annotator=bob, project=project)
    inserted, release = threading.Event(), threading.Event()
    held: dict = {}
    failures: list[BaseException] = []

    def submit_and_hold():
        # Its own thread, so its own connection and transaction, as a second web worker would.
        try:
            with transaction.atomic():
                held["judgement"], held["created"] = services.judgement_submit(
                    assignment=bob_lease,
                    data={"choice": "B", "strength": 1},
                    idempotency_key="held",
                )
                inserted.set()
                if not release.wait(20):
                    raise TimeoutError("never released")
        except BaseException as exc:  # noqa: BLE001 - surfaced to the main thread below
            failures.append(exc)
        finally:
            inserted.set()
            connections.close_all()

    holder = threading.Thread(target=submit_and_hold)
    holder.start()
    try:
        assert inserted.wait(20) and not failures, failures
        # A newer transaction commits first: its commit_seq is above the held one's.
        after = judge(project, alice)
        first = _export_judgements(project=project, shape="raw", since=None)
        first_rows = list(first.rows())
    finally:
        release.set()
        holder.join(20)
    assert not holder.is_alive() and not failures, failures
    late = held["judgement"]
    assert held["created"] and Judgement.objects.filter(pk=late.pk).exists()
    # Neither the open judgement nor the one committed behind it is in the first export: sending
    # `after` would put its cursor past `late`, which would then never be exported.
    assert [r["judgement_id"] for r in first_rows] == [before.pk]

    wait_for_export_horizon()
    second = _export_judgements(project=project, shape="raw", since=first_rows[-1]["cursor"])
    second_ids = [r["judgement_id"] for r in second.rows()]
    assert second_ids == [late.pk, after.pk], "in commit_seq order, each once"
    exported = [before.pk, *second_ids]
    stored = Judgement.objects.filter(project=project).values_list("id", flat=True)
    assert sorted(exported) == sorted(stored) and len(set(exported)) == len(exported) == 3
    assert list(_export_judgements(project=project, shape="raw", since=second.cursor).rows()) == []


@pytest.mark.slow
def test_exports_while_annotators_submit_see_every_judgement_exactly_once():
    project, users = make_project(n_tasks=300, overlap=1, annotators=8)
    stop = threading.Event()
    failures = []

    def annotate(user, seed):
        rng = random.Random(seed)
        try:
            while not stop.is_set() and (
                lease := services.assignment_lease(annotator=user, project=project)
            ):
                services.judgement_submit(
                    assignment=lease,
                    data={"choice": rng.choice("AB"), "strength": 1},
                    idempotency_key=f"{lease.pk}",
                )
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            failures.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=annotate, args=(u, i)) for i, u in enumerate(users)]
    for thread in threads:
        thread.start()
    exported: list[int] = []
    cursor = None
    exports = 0
    # No waiting for a quiet moment here: every export runs while transactions that inserted
    # judgements are open or committing out of order, which is the race the horizon must handle.
    while any(t.is_alive() for t in threads):
        export = _export_judgements(project=project, shape="raw", since=cursor, chunk=7)
        exported.extend(r["judgement_id"] for r in export.rows())
        cursor = export.cursor
        exports += 1
    for thread in threads:
        thread.join()
    export = export_judgements(project=project, shape="raw", since=cursor)
    exported.extend(r["judgement_id"] for r in export.rows())
    assert not failures
    assert exports >= 3, "the exports ran while annotators were submitting"
    stored = list(Judgement.objects.filter(project=project).values_list("id", flat=True))
    assert len(stored) == 300
    assert sorted(exported) == sorted(stored), "every judgement exactly once"
    assert len(exported) == len(set(exported))


def test_cursor_round_trips():
    assert Position.decode(Position(12345, 99).encode()) == Position(12345, 99)


@pytest.mark.parametrize("shape", ["pairs", "raw"])
def test_the_database_built_lines_match_the_portable_path(shape):
    """Postgres builds each line in SQL; SQLite (the demo) builds them in Python: same objects."""
    from annotation.selectors.export import _python_blocks

    project, users = make_project(n_tasks=6, overlap=2, annotators=3)
    for user, choices in zip(users, ["AB", "AA", "BA"], strict=True):
        for i, choice in enumerate(choices):
            judge(project, user, choice, strength=1 + i)
    judge(project, users[2], "tie")
    export = export_judgements(project=project, shape=shape, since=None, chunk=2)
    from_sql = list(export.rows())
    end = Position.decode(export.cursor)
    portable = [
        json.loads(line)
        for block in _python_blocks(project, shape, Position(0, 0), end, 2, None)
        for line in block.split("\n")
        if line
    ]
    assert from_sql == portable and len(from_sql) == (6 if shape == "pairs" else 7)


def test_pair_lines_carry_any_text_exactly():
    """The pairs line is concatenated in SQL, so quoting must survive every awkward character."""
    import io

    tricky = 'He said "hi"\\n\tand left \\ \u2028 é 😀 </script>\x01'
    project = ProjectFactory(overlap=1)
    line = {
        "prompt": [{"role": "user", "content": 'Quote "this" \\ please\n'}],
        "responses": [tricky, "plain"],
    }
    body = (json.dumps(line) + "\n").encode()
    job = services.import_create(
        project=project, user=project.created_by, stream=io.BytesIO(body), size=len(body)
    )
    assert job.status == "done", job.errors
    user = UserFactory()
    services.membership_set(project=project, username=user.username, role=Role.ANNOTATOR)
    judge(project, user, "A", strength=3)
    (row,) = export_judgements(project=project, shape="pairs", since=None).rows()
    assert row["chosen"] == [{"role": "assistant", "content": tricky}]
    assert row["rejected"] == [{"role": "assistant", "content": "plain"}]
    assert row["prompt"] == line["prompt"] and row["margin"] == 3.0 and row["agreement"] == 1.0
    (raw,) = export_judgements(project=project, shape="raw", since=None).rows()
    assert [r["text"] for r in raw["responses"]] == [tricky, "plain"]


def test_until_stops_the_export_at_an_earlier_cursor():
    project, (alice, bob) = make_project()
    before = [judge(project, alice).pk for _ in range(3)]
    first = export_judgements(project=project, shape="pairs", since=None)
    after = [judge(project, bob).pk for _ in range(2)]
    bounded = export_judgements(project=project, shape="pairs", since=None, until=first.cursor)
    assert [r["judgement_ids"][0] for r in bounded.rows()] == before
    assert bounded.cursor == first.cursor
    # Between two cursors: nothing is left out and nothing counted twice.
    rest = export_judgements(project=project, shape="pairs", since=first.cursor)
    assert [r["judgement_ids"][0] for r in rest.rows()] == after
    empty = export_judgements(project=project, shape="raw", since=first.cursor, until=first.cursor)
    assert list(empty.rows()) == []


@pytest.mark.parametrize("shape", ["pairs", "raw"])
def test_every_line_resumes_exactly_after_itself(shape):
    """A body cut after any line resumes from that line's cursor: nothing lost, nothing twice."""
    project, (alice, bob) = make_project(n_tasks=12)
    for i in range(10):
        judge(project, (alice, bob)[i % 2], ("A", "B", "tie")[i % 3])
    export = export_judgements(project=project, shape=shape, since=None, chunk=3)
    rows = list(export.rows())
    assert len(rows) == (7 if shape == "pairs" else 10)
    assert export.since == Position(0, 0).encode()
    cursors = [row["cursor"] for row in rows]
    positions = [astuple(Position.decode(cursor)) for cursor in cursors]
    assert positions == sorted(positions) and len(set(cursors)) == len(cursors)
    for k, cursor in enumerate(cursors):
        rest = export_judgements(project=project, shape=shape, since=cursor, chunk=2)
        assert rest.since == cursor
        assert list(rest.rows()) == rows[k + 1 :], f"resuming after line {k}"


def test_pseudonyms_differ_between_projects_and_stay_stable_within_one():
    """Two projects' exports cannot be joined on the annotator column."""
    first, (alice, _) = make_project(n_tasks=3)
    second, _ = make_project(n_tasks=3)
    services.membership_set(project=second, username=alice.username, role=Role.ANNOTATOR)
    for _ in range(2):
        judge(first, alice)
        judge(second, alice)
    in_first = {
        r["annotator"] for r in export_judgements(project=first, shape="raw", since=None).rows()
    }
    in_second = {
        r["annotator"] for r in export_judgements(project=second, shape="pairs", since=None).rows()
    }
    assert len(in_first) == 1 and len(in_second) == 1, "stable within a project"
    assert in_first != in_second, "different between projects"
    assert in_first == {annotator_pseudonym(project_id=first.pk, user_id=alice.pk)}
    assert in_second == {annotator_pseudonym(project_id=second.pk, user_id=alice.pk)}
    # Keyed by the secret: the same ids under another SECRET_KEY give other pseudonyms.
    from django.test import override_settings

    with override_settings(SECRET_KEY="another-secret-entirely"):
        assert annotator_pseudonym(project_id=first.pk, user_id=alice.pk) not in in_first
