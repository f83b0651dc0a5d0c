"""The hindsight panel's arithmetic against cases counted by hand (annotation/kinds/hindsight/stats.py).

The five paired judgements of `PAIRS` are written out in `test_the_hand_counted_project`'s
docstring with every count the page shows; the database test at the end stores judgements through
the real services and checks that the read path pairs them the same way.
"""

import pytest

from annotation.kinds.hindsight.stats import (
    PairedJudgement,
    changed,
    flipped,
    hindsight_summary,
    known_utilities,
    pair_rows,
    utility_agrees,
)


def _pj(annotator, sources, before, after, utility=None):
    (f_ratings, f_choice), (h_ratings, h_choice) = before, after
    foresight = {"ratings": f_ratings, "choice": f_choice, "reason": ""}
    hindsight = {"ratings": h_ratings, "choice": h_choice, "reason": ""}
    return PairedJudgement(annotator, tuple(sources), foresight, hindsight, utility)


PAIRS = [
    # 1: A then B (a flip); utility says B.
    _pj("ana", ["m1", "m2"], ([5, 2], "A"), ([1, 4], "B"), [0.2, 1.0]),
    # 2: tie then B (changed, not a flip); utility says A.
    _pj("ana", ["m1", "m1"], ([4, 4], "tie"), ([2, 5], "B"), [1.0, 0.5]),
    # 3: A both times; utility says A.
    _pj("bob", ["m1", "m2"], ([3, 3], "A"), ([3, 3], "A"), [1.0, -1]),
    # 4: one response, no choice; no utility.
    _pj("bob", ["imported"], ([5], ""), ([1], ""), None),
    # 5: B then A (a flip); equal utilities name no better response.
    _pj("bob", ["m2", "m1"], ([2, 4], "B"), ([4, 2], "A"), [0.5, 0.5]),
]


@pytest.mark.parametrize(
    ("before", "after", "flip", "change"),
    [
        ("A", "B", True, True),
        ("B", "A", True, True),
        ("A", "A", False, False),
        ("B", "B", False, False),
        ("A", "tie", None, True),  # a withdrawn preference is not a reversed one
        ("tie", "B", None, True),
        ("tie", "tie", None, False),
        ("", "", None, None),  # one response: no choice to compare
    ],
)
def test_flip_and_change_rules(before, after, flip, change):
    assert flipped(before, after) is flip
    assert changed(before, after) is change


@pytest.mark.parametrize(
    ("choice", "utilities", "agrees"),
    [
        ("A", [1.0, 0.5], True),
        ("B", [1.0, 0.5], False),
        ("B", [-1, 0.25], True),
        ("A", [0.5, 0.5], None),  # equal: no better response
        ("tie", [1.0, 0.5], None),  # not decisive
        ("", [1.0, 0.5], None),
        ("A", None, None),
        ("A", [1.0], None),
        ("A", [1.0, 0.5, 0.2], None),
        ("A", [True, False], None),  # an importer's booleans are not utilities
        ("A", ["1", "0"], None),
    ],
)
def test_utility_agreement_rule(choice, utilities, agrees):
    assert utility_agrees(choice, utilities) is agrees


def test_the_hand_counted_project():
    """Overall: 5 paired; 4 with a choice in both phases (1, 2, 3, 5), of which 3 changed (1, 2, 5):
    75%; 3 decisive in both (1, 3, 5), of which 2 flipped (1, 5): 2/3.
    Foresight ratings 5+2+4+4+3+3+5+2+4 = 32 over 9; hindsight 1+4+2+5+3+3+1+4+2 = 25 over 9.
    Utility, foresight: 1 chose A against B (no), 3 chose A with A (yes); 2 is a tie, 5 equal: 1/2.
    Hindsight: 1 B (yes), 2 B against A (no), 3 A (yes): 2/3."""
    stats = hindsight_summary(PAIRS, awaiting=4)
    overall = stats.overall
    assert (overall.paired, overall.two_responses, overall.changes) == (5, 4, 3)
    assert (overall.decisive, overall.flips) == (3, 2)
    assert overall.flip_rate == pytest.approx(2 / 3)
    assert overall.flip_percent == pytest.approx(200 / 3)
    assert overall.change_rate == pytest.approx(0.75)
    assert (overall.foresight.rating_sum, overall.foresight.ratings) == (32, 9)
    assert (overall.hindsight.rating_sum, overall.hindsight.ratings) == (25, 9)
    assert overall.foresight.mean_satisfaction == pytest.approx(32 / 9)
    assert overall.satisfaction_shift == pytest.approx(-7 / 9)
    assert (overall.foresight.utility_agreeing, overall.foresight.utility_decisive) == (1, 2)
    assert (overall.hindsight.utility_agreeing, overall.hindsight.utility_decisive) == (2, 3)
    assert overall.hindsight.utility_agreement_percent == pytest.approx(200 / 3)
    assert stats.has_utility and stats.awaiting == 4


def test_per_annotator():
    """ana: pairs 1, 2 (both changed; 1 decisive, flipped). bob: 3, 4, 5 (3 and 5 have choices,
    5 changed; both decisive, 5 flipped)."""
    rows = {row.name: row.tally for row in hindsight_summary(PAIRS).by_annotator}
    assert list(rows) == ["ana", "bob"]
    ana, bob = rows["ana"], rows["bob"]
    assert (ana.paired, ana.two_responses, ana.changes, ana.decisive, ana.flips) == (2, 2, 2, 1, 1)
    assert (bob.paired, bob.two_responses, bob.changes, bob.decisive, bob.flips) == (3, 2, 1, 2, 1)
    assert bob.flip_rate == 0.5
    # bob's ratings: pair 3 (3, 3 | 3, 3), 4 (5 | 1), 5 (2, 4 | 4, 2).
    assert bob.foresight.mean_satisfaction == pytest.approx(17 / 5)
    assert bob.hindsight.mean_satisfaction == pytest.approx(13 / 5)


def test_per_source_counts_a_pair_under_each_source_and_a_rating_under_its_own():
    """m1 is in pairs 1, 2, 3, 5 (pair 2 twice over, counted once); m2 in 1, 3, 5; imported in 4.
    m1's ratings: 5 (1), 4 and 4 (2), 3 (3), 4 (5, position 1) = 20/5, then 1, 2, 5, 3, 2 = 13/5.
    m2's: 2 (1), 3 (3), 2 (5, position 0) = 7/3, then 4, 3, 4 = 11/3."""
    rows = {row.name: row.tally for row in hindsight_summary(PAIRS).by_source}
    assert list(rows) == ["imported", "m1", "m2"]
    m1, m2, imported = rows["m1"], rows["m2"], rows["imported"]
    assert (m1.paired, m1.decisive, m1.flips, m1.two_responses, m1.changes) == (4, 3, 2, 4, 3)
    assert (m1.foresight.rating_sum, m1.foresight.ratings) == (20, 5)
    assert (m1.hindsight.rating_sum, m1.hindsight.ratings) == (13, 5)
    assert (m2.paired, m2.decisive, m2.flips) == (3, 3, 2)
    assert m2.foresight.mean_satisfaction == pytest.approx(7 / 3)
    assert m2.hindsight.mean_satisfaction == pytest.approx(11 / 3)
    # One response, no choice: ratings count, rates are undefined rather than 0.
    assert (imported.paired, imported.decisive, imported.two_responses) == (1, 0, 0)
    assert imported.flip_rate is None and imported.change_rate is None
    assert (imported.foresight.mean_satisfaction, imported.hindsight.mean_satisfaction) == (5, 1)


def test_nothing_paired_gives_no_rates():
    stats = hindsight_summary([], awaiting=2)
    assert stats.overall.paired == 0
    assert stats.overall.flip_rate is None
    assert stats.overall.foresight.mean_satisfaction is None
    assert stats.overall.satisfaction_shift is None
    assert not stats.has_utility
    assert stats.by_annotator == [] and stats.by_source == []


def test_pair_rows_pairs_by_task_and_annotator_and_counts_the_waiting():
    """Rows of (group, annotator, phase, payload, sources, utility) sorted by group. A foresight
    row alone is awaiting; the phases pair whatever assignment each was stored under."""
    f = {"ratings": [4, 2], "choice": "A"}
    h = {"ratings": [2, 4], "choice": "B"}
    rows = [
        ((1, 10), "ana", "foresight", f, ["m1", "m2"], [0.0, 1.0]),
        ((1, 10), "ana", "hindsight", h, ["m1", "m2"], [0.0, 1.0]),
        ((1, 11), "bob", "foresight", f, ["m1", "m2"], [0.0, 1.0]),  # awaiting
        ((2, 10), "ana", "foresight", h, ["m1", "m2"], None),
        ((2, 10), "ana", "hindsight", h, ["m1", "m2"], None),
        ((3, 12), "cy", "foresight", f, ["m3"], None),  # awaiting
    ]
    pairs, awaiting = pair_rows(rows)
    assert awaiting == 2
    assert [(p.annotator, p.foresight["choice"], p.hindsight["choice"]) for p in pairs] == [
        ("ana", "A", "B"),
        ("ana", "B", "B"),
    ]
    assert pairs[0].sources == ("m1", "m2") and pairs[0].true_utility == [0.0, 1.0]
    stats = hindsight_summary(pairs, awaiting=awaiting)
    assert (stats.overall.flips, stats.overall.decisive) == (1, 2)


# --- through the database: real imports, leases and judgements -------------------------------

HOSTILE = "<script>alert(1)</script>m1"


def _line(utility):
    return {
        "prompt": "Which phone should I buy under $300?",
        "responses": [
            {"text": "Buy the X.", "model": HOSTILE, "outcome": "The X broke in a week."},
            {"text": "Buy the Y.", "model": "m2", "outcome": "The Y works fine."},
        ],
        "metadata": {"true_utility": utility},
    }


@pytest.fixture
def judged_project():
    """Two tasks, judged in both phases by ana and in foresight only by bob (his lease stays open).

    Task 1 (utility A > B): ana rates [5, 2] and picks A, then [2, 4] and B: a flip; foresight
    agrees with the utility, hindsight does not. Task 2 (utility B > A): ana picks B both times
    ([1, 5] then [2, 4]): no flip, both agree. bob's foresight is awaiting."""
    import io

    from annotation import services
    from annotation.models import Prompt, Role
    from tests.factories import UserFactory, jsonl

    manager, ana, bob = UserFactory(), UserFactory(username="ana"), UserFactory(username="bob")
    project = services.project_create(creator=manager, name="Shop", kind="hindsight", overlap=2)
    for user in (ana, bob):
        services.membership_set(project=project, username=user.username, role=Role.ANNOTATOR)
    body = jsonl([_line([1.0, 0.0]), _line([0.0, 1.0])])
    job = services.import_create(
        project=project, user=manager, stream=io.BytesIO(body), size=len(body)
    )
    assert job.status == "done", job.errors
    answers = {
        # first true utility of the task's prompt -> (foresight, hindsight)
        1.0: (([5, 2], "A"), ([2, 4], "B")),
        0.0: (([1, 5], "B"), ([2, 4], "B")),
    }
    for n in range(2):
        lease = services.assignment_lease(annotator=ana, project=project)
        # Read back: the lease's own prompt object carries only what the page shows.
        prompt = Prompt.objects.get(pk=lease.task.prompt_id)
        before, after = answers[prompt.metadata["true_utility"][0]]
        for phase, (ratings, choice) in (("foresight", before), ("hindsight", after)):
            services.judgement_submit(
                assignment=lease,
                data={"phase": phase, "ratings": ratings, "choice": choice},
                idempotency_key=f"ana-{n}-{phase}",
            )
    lease = services.assignment_lease(annotator=bob, project=project)
    services.judgement_submit(
        assignment=lease,
        data={"phase": "foresight", "ratings": [3, 3], "choice": "tie"},
        idempotency_key="bob-f",
    )
    return project, manager


@pytest.mark.django_db
def test_the_database_read_pairs_phases_as_counted_by_hand(judged_project):
    from annotation.kinds.hindsight.stats import hindsight_stats

    project, _ = judged_project
    stats = hindsight_stats(project=project)
    overall = stats.overall
    assert (overall.paired, overall.decisive, overall.flips, stats.awaiting) == (2, 2, 1, 1)
    assert overall.flip_rate == 0.5
    assert (overall.foresight.rating_sum, overall.foresight.ratings) == (13, 4)
    assert (overall.hindsight.rating_sum, overall.hindsight.ratings) == (12, 4)
    assert (overall.foresight.utility_agreeing, overall.foresight.utility_decisive) == (2, 2)
    assert (overall.hindsight.utility_agreeing, overall.hindsight.utility_decisive) == (1, 2)
    assert [row.name for row in stats.by_annotator] == ["ana"]
    sources = {row.name: row.tally for row in stats.by_source}
    assert set(sources) == {HOSTILE, "m2"}
    # Position 0 (HOSTILE) was rated 5 and 1, then 2 and 2; position 1 (m2) 2 and 5, then 4 and 4.
    assert (sources[HOSTILE].foresight.rating_sum, sources[HOSTILE].hindsight.rating_sum) == (6, 4)
    assert (sources["m2"].foresight.rating_sum, sources["m2"].hindsight.rating_sum) == (7, 8)


@pytest.mark.django_db
def test_the_project_page_shows_the_panel_escaped(client, judged_project):
    from tests.factories import PASSWORD

    project, manager = judged_project
    assert client.login(username=manager.username, password=PASSWORD)
    html = client.get(f"/projects/{project.pk}/").content.decode()
    assert "Foresight and hindsight" in html
    assert 'data-stat="flip-rate">50%<' in html
    assert "1 of 2 decisive in both phases reversed" in html
    assert 'data-stat="utility">100% → 50%<' in html
    assert "1 foresight judgement awaiting hindsight" in html
    assert HOSTILE not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;m1" in html


@pytest.mark.django_db
def test_a_project_without_judgements_says_so(client):
    from annotation import services
    from tests.factories import PASSWORD, UserFactory

    manager = UserFactory()
    project = services.project_create(creator=manager, name="Empty", kind="hindsight")
    assert client.login(username=manager.username, password=PASSWORD)
    html = client.get(f"/projects/{project.pk}/").content.decode()
    assert "No paired judgements yet." in html
    assert 'data-stat="flip-rate"' not in html


def test_a_stored_utility_outranks_the_imported_one_position_by_position():
    # None stored: the imported value as it is, unchecked (utility_agrees reads it defensively).
    assert known_utilities((None, None), [0.8, -1.0]) == [0.8, -1.0]
    assert known_utilities((None, None), "junk") == "junk"
    assert known_utilities((), None) is None
    # Stored where set, imported elsewhere; an imported value that is no number stays unknown.
    assert known_utilities((0.6, None), [0.8, -1.0]) == [0.6, -1.0]
    assert known_utilities((None, 0.25), None) == [None, 0.25]
    assert known_utilities((1.0, None), [0.5, True]) == [1.0, None]
    assert utility_agrees("B", known_utilities((None, 0.25), None)) is None
    assert utility_agrees("A", known_utilities((0.6, None), [0.8, -1.0])) is True


@pytest.mark.django_db
def test_stored_utilities_of_loop_answers_count_on_the_project_page(client):
    """The loop project of tests/annotation/selectors/test_rounds_hindsight.py. Imported utilities
    alone: imp (i1 0.8 > i2 -1.0; both annotators B then A) and raw (R: 1.0 > 0.5; both A then
    B): foresight 2/4, hindsight 2/4. With the stored ones, e1a (a1 -1.0 < b1 0.75: u1 A then B,
    u2 A then A) and t1 (s1 0.5 > s2 0.2: u1 A then A, u2 B then A) count too: foresight
    (0 + 0 + 2 + 1) / 8, hindsight (2 + 0 + 1 + 2) / 8."""
    from annotation import services
    from annotation.kinds.hindsight.stats import hindsight_stats
    from annotation.models import Role
    from tests.annotation.selectors.test_rounds_hindsight import looped_project, store_utilities
    from tests.factories import UserFactory

    project, _ = looped_project()
    overall = hindsight_stats(project=project).overall
    assert (overall.foresight.utility_agreeing, overall.foresight.utility_decisive) == (2, 4)
    assert (overall.hindsight.utility_agreeing, overall.hindsight.utility_decisive) == (2, 4)
    store_utilities(project)
    overall = hindsight_stats(project=project).overall
    assert (overall.foresight.utility_agreeing, overall.foresight.utility_decisive) == (3, 8)
    assert (overall.hindsight.utility_agreeing, overall.hindsight.utility_decisive) == (5, 8)

    manager = UserFactory()
    services.membership_set(project=project, username=manager.username, role=Role.MANAGER)
    client.force_login(manager)
    html = client.get(f"/projects/{project.pk}/").content.decode()
    assert 'data-stat="utility">37.5% → 62.5%<' in html
