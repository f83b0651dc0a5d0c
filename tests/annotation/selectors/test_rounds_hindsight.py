"""The loop's hindsight figures per policy (model version), against judgements counted by hand, on
Postgres: `phased_answers`, `kind_round_stats` (the kind's `round_stats` hook), the rounds API's
payload, and the human win rate and judgement counts taken from the last phase only.

A hindsight project with policies π0, π1 and π2 and two annotators who judge every task (overlap
2), each in both phases, except u2 who leaves o1 at foresight. Tasks, each showing (position 0,
position 1):

    e1a  evaluation, round 1   (π1 "a1" on E1, π0 "b1" on E1)
    e1b  evaluation, round 1   (π0 "b2" on E2, π1 "a2" on E2)
    e2a  evaluation, round 2   (π2 "c1" on E1, π1 "a3" on E1)
    imp  label, round 0        (π0 "i1", π1 "i2" on I: the import's task; I's metadata.true_utility
                                is [0.8, -1.0], so i1's utility is 0.8 and i2's -1.0)
    t1   label, round 1        (π1 "s1", π1 "s2" on I: a task the loop made, so I's imported
                                utilities are not theirs: unknown)
    o1   label, round 1        (π2 "d1" on T1, one response: ratings, no choice)
    raw  label, round 0        (two imported answers without a model version: no policy's)

Each expected number is worked out beside its assertion from ANSWERS.
"""

import pytest

from annotation import services
from annotation.kinds import kind_for
from annotation.kinds.pairwise_loop import PairwiseLoop
from annotation.models import ModelVersion, Prompt, Response, Role, Round
from annotation.selectors.rounds import (
    judgements_per_round,
    kind_round_stats,
    phased_answers,
    round_payload,
    rounds_of,
)
from annotation.services.round_stages import task_create
from tests.factories import ProjectFactory, UserFactory

pytestmark = pytest.mark.django_db


def judged(foresight_ratings, foresight_choice, hindsight_ratings=None, hindsight_choice=None):
    """(foresight payload, hindsight payload or None: left at foresight)."""

    def body(phase, ratings, choice):
        data = {"phase": phase, "ratings": ratings}
        return {**data, "choice": choice} if choice else data

    first = body("foresight", foresight_ratings, foresight_choice)
    if hindsight_ratings is None:
        return first, None
    return first, body("hindsight", hindsight_ratings, hindsight_choice)


ANSWERS = {
    "u1": {
        "e1a": judged([4, 2], "A", [2, 4], "B"),  # flip
        "e1b": judged([5, 3], "A", [5, 2], "A"),
        "e2a": judged([3, 3], "tie", [2, 4], "B"),  # changed, not a flip
        "imp": judged([2, 5], "B", [4, 1], "A"),  # flip; foresight picks -1.0, hindsight 0.8
        "t1": judged([4, 4], "A", [3, 3], "A"),
        "o1": judged([5], None, [1], None),
        "raw": judged([1, 1], "A", [1, 1], "B"),
    },
    "u2": {
        "e1a": judged([5, 1], "A", [5, 2], "A"),
        "e1b": judged([4, 4], "tie", [3, 3], "tie"),
        "e2a": judged([4, 2], "A", [1, 5], "B"),  # flip
        "imp": judged([3, 4], "B", [5, 2], "A"),  # flip; as u1's
        "t1": judged([2, 5], "B", [4, 2], "A"),  # flip
        "o1": judged([4], None),  # awaiting its hindsight
        "raw": judged([1, 1], "A", [1, 1], "B"),
    },
}
LEASED_LAST = "o1"  # a foresight left waiting keeps its lease: it must be the user's last

# True utilities as an exact world model stores them with the outcome (Response.true_utility), by
# answer: the loop's answers b1 (π0), a1 (π1, e1a), s1, s2 (π1, t1) and d1 (π2, o1), and i1 on the
# import's task, whose stored 0.6 outranks the 0.8 imported in I's metadata.
STORED = {"b1": 0.75, "a1": -1.0, "s1": 0.5, "s2": 0.2, "d1": 1.0, "i1": 0.6}


def store_utilities(project, stored=STORED):
    for name, value in stored.items():
        answers = Response.objects.filter(prompt__project=project, text=f"Buy option {name}.")
        assert answers.update(true_utility=value) == 1, name


def looped_project(*, pi2_name="π2 policy"):
    """The project above, judged; returns (project, {round: ModelVersion})."""
    project = ProjectFactory(kind="hindsight", overlap=2, creator=UserFactory(is_staff=True))
    users = {}
    for name in ANSWERS:
        users[name] = UserFactory(username=f"{name}-{project.pk}")
        services.membership_set(project=project, username=users[name].username, role=Role.ANNOTATOR)
    policies = {}
    for number, name in [(0, "π0 (base)"), (1, "π1 policy"), (2, pi2_name)]:
        policies[number] = ModelVersion.objects.create(
            project=project, kind="policy", round=number, name=name, parent=policies.get(number - 1)
        )
    ModelVersion.objects.create(project=project, kind="reward", round=1, name="reward r1")
    for number in (1, 2):
        Round.objects.create(
            project=project, number=number, status="succeeded", policy_version=policies[number]
        )
    prompts = {
        key: Prompt.objects.create(
            project=project,
            messages=[{"role": "user", "content": f"Which option suits me ({key})?"}],
            split=split,
            metadata=metadata,
        )
        for key, split, metadata in [
            ("E1", "eval", {}),
            ("E2", "eval", {}),
            ("I", "train", {"true_utility": [0.8, -1.0], "scenario": 7}),
            ("T1", "train", {}),
            ("R", "train", {"true_utility": [1.0, 0.5]}),
        ]
    }

    def answer(prompt, version, text):
        return Response.objects.create(
            prompt=prompts[prompt],
            text=f"Buy option {text}.",
            model_name=version.name if version else "imported-model",
            model_version=version,
        )

    pi0, pi1, pi2 = policies[0], policies[1], policies[2]
    layout = {
        "e1a": ("E1", 1, "evaluation", [answer("E1", pi1, "a1"), answer("E1", pi0, "b1")]),
        "e1b": ("E2", 1, "evaluation", [answer("E2", pi0, "b2"), answer("E2", pi1, "a2")]),
        "e2a": ("E1", 2, "evaluation", [answer("E1", pi2, "c1"), answer("E1", pi1, "a3")]),
        "imp": ("I", 0, "label", [answer("I", pi0, "i1"), answer("I", pi1, "i2")]),
        "t1": ("I", 1, "label", [answer("I", pi1, "s1"), answer("I", pi1, "s2")]),
        "o1": ("T1", 1, "label", [answer("T1", pi2, "d1")]),
        "raw": ("R", 0, "label", [answer("R", None, "r1"), answer("R", None, "r2")]),
    }
    by_task = {}
    for key, (prompt, number, purpose, shown) in layout.items():
        task = task_create(
            project,
            prompts[prompt],
            shown,
            round_number=number,
            priority=-1.0 if key == LEASED_LAST else 0.0,
            purpose=purpose,
        )
        by_task[task.pk] = key
    for name, user in users.items():
        for i in range(len(layout)):
            lease = services.assignment_lease(annotator=user, project=project)
            foresight, hindsight = ANSWERS[name][by_task[lease.task_id]]
            services.judgement_submit(assignment=lease, data=foresight, idempotency_key=f"{i}f")
            if hindsight is not None:
                services.judgement_submit(assignment=lease, data=hindsight, idempotency_key=f"{i}h")
    return project, policies


def test_flips_satisfaction_and_utility_per_model_version_match_the_hand_count():
    project, policies = looped_project()
    stats = kind_round_stats(project=project)
    figures = {p.round: p for p in stats.policies}
    assert list(figures) == [0, 1, 2]  # the reward version is no policy
    assert {r: f.model_version for r, f in figures.items()} == {
        r: v.pk for r, v in policies.items()
    }

    # π0 held out: e1a (u1 A→B flip; u2 A→A) and e1b (u1 A→A; u2 tie→tie): 4 paired, 3 decisive
    # in both phases, 1 flip; changed 1 of 4. Its ratings: e1a position 1 (u1 2→4, u2 1→2), e1b
    # position 0 (u1 5→5, u2 4→3): foresight 12/4 = 3.0, hindsight 14/4 = 3.5.
    held = figures[0].held_out
    t = held.tally
    assert (t.paired, t.decisive, t.flips, t.two_responses, t.changes) == (4, 3, 1, 4, 1)
    assert t.flip_rate == pytest.approx(1 / 3)
    assert (t.foresight.mean_satisfaction, t.hindsight.mean_satisfaction) == (3.0, 3.5)
    assert (held.answers, held.awaiting, held.true_utility, held.utility_answers) == (2, 0, None, 0)
    # All tasks add imp (u1 B→A and u2 B→A: two flips) and i1's ratings (u1 2→4, u2 3→5):
    # 6 paired, 5 decisive, 3 flips; foresight 17/6, hindsight 23/6. i1's imported utility 0.8 is
    # the only one known. On imp both foresight choices picked i2 (-1.0), both hindsight ones i1.
    every = figures[0].all_tasks
    t = every.tally
    assert (t.paired, t.decisive, t.flips) == (6, 5, 3)
    assert t.flip_rate == pytest.approx(3 / 5)
    assert t.foresight.mean_satisfaction == pytest.approx(17 / 6)
    assert t.hindsight.mean_satisfaction == pytest.approx(23 / 6)
    assert (every.answers, every.true_utility, every.utility_answers) == (3, 0.8, 1)
    assert (t.foresight.utility_agreeing, t.foresight.utility_decisive) == (0, 2)
    assert (t.hindsight.utility_agreeing, t.hindsight.utility_decisive) == (2, 2)

    # π1 held out: e1a (flip, no flip), e1b (no flip, tie→tie), e2a (u1 tie→B: changed, not
    # decisive; u2 A→B: flip): 6 paired, 4 decisive, 2 flips, 3 of 6 changed. Ratings: e1a 0
    # (4→2, 5→5), e1b 1 (3→2, 4→3), e2a 1 (3→4, 2→5): 21/6 = 3.5 in both phases.
    held = figures[1].held_out
    t = held.tally
    assert (t.paired, t.decisive, t.flips, t.two_responses, t.changes) == (6, 4, 2, 6, 3)
    assert (t.flip_rate, t.change_rate) == (0.5, 0.5)
    assert (t.foresight.mean_satisfaction, t.hindsight.mean_satisfaction) == (3.5, 3.5)
    # All tasks add imp (two flips; i2 rated 5→1 and 4→2) and t1 (u1 A→A; u2 B→A flip; both its
    # positions are π1's: 4+4→3+3 and 2+5→4+2): 10 paired, 8 decisive, 5 flips; foresight
    # (21+9+15)/12 = 3.75, hindsight (21+3+12)/12 = 3.0. Only i2's utility is known (-1.0): t1 sits
    # on prompt I too, but the loop made it, so I's imported utilities are not s1's and s2's.
    every = figures[1].all_tasks
    t = every.tally
    assert (t.paired, t.decisive, t.flips) == (10, 8, 5)
    assert t.flip_rate == pytest.approx(5 / 8)
    assert (t.foresight.ratings, t.foresight.mean_satisfaction) == (12, 3.75)
    assert (t.hindsight.ratings, t.hindsight.mean_satisfaction) == (12, 3.0)
    assert (every.answers, every.true_utility, every.utility_answers) == (6, -1.0, 1)
    assert (t.hindsight.utility_agreeing, t.hindsight.utility_decisive) == (2, 2)

    # π2 held out: e2a position 0 (u1 tie→B: not decisive; u2 A→B: flip), rated 3→2 and 4→1.
    held = figures[2].held_out
    t = held.tally
    assert (t.paired, t.decisive, t.flips, t.flip_rate) == (2, 1, 1, 1.0)
    assert (t.foresight.mean_satisfaction, t.hindsight.mean_satisfaction) == (3.5, 1.5)
    # All tasks add o1, one response: u1's pair (rated 5→1, no choice: neither decisive nor a
    # choice to change) and u2's foresight, awaiting: 3 paired, 1 awaiting, still 1 of 1 flipped;
    # foresight (7+5)/3 = 4.0, hindsight (3+1)/3.
    every = figures[2].all_tasks
    t = every.tally
    assert (t.paired, every.awaiting, t.decisive, t.two_responses, t.flips) == (3, 1, 1, 2, 1)
    assert t.foresight.mean_satisfaction == 4.0
    assert t.hindsight.mean_satisfaction == pytest.approx(4 / 3)
    assert (every.answers, every.true_utility) == (2, None)


def test_stored_utilities_count_for_the_loops_answers_and_outrank_imported_ones():
    project, _ = looped_project()
    store_utilities(project)
    figures = {p.round: p for p in kind_round_stats(project=project).policies}

    # π0 held out: b1 0.75 (b2 unknown). Agreement where both utilities are known: e1a only,
    # (a1 -1.0, b1 0.75) so B is better: u1 A then B, u2 A then A -> foresight 0/2, hindsight 1/2.
    held = figures[0].held_out
    assert (held.answers, held.true_utility, held.utility_answers) == (2, 0.75, 1)
    assert (held.tally.foresight.utility_agreeing, held.tally.foresight.utility_decisive) == (0, 2)
    assert (held.tally.hindsight.utility_agreeing, held.tally.hindsight.utility_decisive) == (1, 2)
    # All tasks add i1, stored 0.6 (not the imported 0.8): (0.75 + 0.6) / 2. imp's utilities are
    # (0.6 stored, -1.0 imported for i2): A better; both annotators B then A -> 0/2, 2/2.
    every = figures[0].all_tasks
    assert (every.answers, every.utility_answers) == (3, 2)
    assert every.true_utility == pytest.approx(0.675)
    assert (every.tally.foresight.utility_agreeing, every.tally.foresight.utility_decisive) == (
        0,
        4,
    )
    assert (every.tally.hindsight.utility_agreeing, every.tally.hindsight.utility_decisive) == (
        3,
        4,
    )

    # π1 held out: a1 -1.0 (a2, a3 unknown); e1a as above.
    held = figures[1].held_out
    assert (held.answers, held.true_utility, held.utility_answers) == (3, -1.0, 1)
    # All tasks: a1 -1.0, i2 -1.0 (imported), s1 0.5 and s2 0.2 (stored on a task the loop made,
    # where the imported numbers would not apply): -1.3 / 4. t1 (0.5 > 0.2, A better): u1 A then
    # A, u2 B then A -> 1/2, 2/2; with e1a and imp: foresight 1/6, hindsight 5/6.
    every = figures[1].all_tasks
    assert (every.answers, every.utility_answers) == (6, 4)
    assert every.true_utility == pytest.approx(-0.325)
    assert (every.tally.foresight.utility_agreeing, every.tally.foresight.utility_decisive) == (
        1,
        6,
    )
    assert (every.tally.hindsight.utility_agreeing, every.tally.hindsight.utility_decisive) == (
        5,
        6,
    )

    # π2: c1 unknown held out; d1 1.0 on o1, a one-response task: no choice to agree.
    assert (figures[2].held_out.true_utility, figures[2].held_out.utility_answers) == (None, 0)
    every = figures[2].all_tasks
    assert (every.answers, every.true_utility, every.utility_answers) == (2, 1.0, 1)
    assert every.tally.hindsight.utility_decisive == 0

    rows = list(phased_answers(project=project))
    imported = next(r for r in rows if r.task_round == 0)
    assert imported.slot_utilities == (0.6, None)  # i1 stored, i2 only imported


def test_rounds_payload_carries_both_sides_of_each_rounds_evaluation():
    project, policies = looped_project()
    stats = kind_round_stats(project=project)
    payloads = {row.number: round_payload(row, stats) for row in rounds_of(project=project)}
    one, two = payloads[1], payloads[2]
    assert (one["policy_stats"]["model_version"], one["policy_stats"]["round"]) == (
        policies[1].pk,
        1,
    )
    assert one["previous_policy_stats"]["name"] == "π0 (base)"
    assert one["previous_policy_stats"]["all_tasks"] == {
        "answers": 3,
        "paired": 6,
        "awaiting": 0,
        "decisive": 5,
        "flips": 3,
        "flip_rate": 0.6,
        "two_responses": 6,
        "changes": 3,  # e1a u1 and imp's two
        "change_rate": 0.5,
        "satisfaction": {"foresight": pytest.approx(17 / 6), "hindsight": pytest.approx(23 / 6)},
        "ratings": {"foresight": 6, "hindsight": 6},
        "utility_agreement": {"foresight": 0.0, "hindsight": 1.0},
        "true_utility": 0.8,
        "true_utility_answers": 1,
    }
    assert one["policy_stats"]["held_out"]["flip_rate"] == 0.5
    assert one["policy_stats"]["all_tasks"]["true_utility"] == -1.0
    assert two["previous_policy_stats"] == one["policy_stats"]
    assert two["policy_stats"]["all_tasks"]["awaiting"] == 1
    assert two["policy_stats"]["all_tasks"]["true_utility"] is None


def test_the_rounds_api_returns_the_figures(client):
    project, _ = looped_project()
    manager = UserFactory()
    services.membership_set(project=project, username=manager.username, role=Role.MANAGER)
    client.force_login(manager)
    response = client.get(f"/api/v1/projects/{project.pk}/rounds")
    assert response.status_code == 200, response.content
    rounds = {r["number"]: r for r in response.json()}
    assert rounds[1]["policy_stats"]["held_out"]["paired"] == 6
    assert rounds[1]["previous_policy_stats"]["all_tasks"]["true_utility"] == 0.8
    assert rounds[2]["policy_stats"]["held_out"]["satisfaction"] == {
        "foresight": 3.5,
        "hindsight": 1.5,
    }


def test_every_phase_row_of_a_versioned_task_is_read_in_pairing_order():
    project, _ = looped_project()
    rows = list(phased_answers(project=project))
    # 6 versioned tasks × 2 annotators × 2 phases, less u2's missing hindsight of o1; raw is left out.
    assert len(rows) == 23
    keys = [(r.task_id, r.annotator_id, r.phase) for r in rows]
    assert keys == sorted(keys)
    imported = [r for r in rows if r.task_round == 0]
    assert len(imported) == 4
    assert {r.prompt_metadata["true_utility"][0] for r in imported} == {0.8}
    assert all(all(v for _, v in r.slots) for r in rows)
    # No world model wrote any utility here: every slot's is unknown, one per slot.
    assert all(r.slot_utilities == (None,) * len(r.slots) for r in rows)


def test_the_win_rate_and_the_judgement_counts_take_the_last_phase_only(monkeypatch):
    project, _ = looped_project()
    # The loop does not serve hindsight projects yet: give the kind pairwise's evaluation rule,
    # which reads a choice of A, B or tie as hindsight's answer is.
    monkeypatch.setattr(kind_for("hindsight"), "loop", PairwiseLoop(), raising=False)
    rows = {row.number: row for row in rounds_of(project=project)}
    # Round 1, hindsight answers: π1 is A on e1a (u1 B: loss, u2 A: win) and B on e1b (u1 A:
    # loss, u2 tie: half) -> 1.5 of 4. With the foresight rows too it would be 4 of 8.
    assert (rows[1].win_rate, rows[1].win_rate_n) == (0.375, 4)
    # Round 2: π2 is A on e2a, both hindsight answers B -> 0 of 2.
    assert (rows[2].win_rate, rows[2].win_rate_n) == (0.0, 2)
    # Completed judgements: round 0 imp and raw (2 each), round 1 e1a, e1b, t1 (2 each) and o1
    # (u1's only), round 2 e2a (2).
    assert judgements_per_round(project=project) == {0: 4, 1: 7, 2: 2}


def test_no_policy_yet_measures_nothing_and_pairwise_makes_no_query(django_assert_num_queries):
    empty = ProjectFactory(kind="hindsight")
    stats = kind_round_stats(project=empty)
    assert stats.policies == [] and stats.policy_json(1) is None
    assert stats.previous_policy_json(1) is None
    pairwise = ProjectFactory()
    with django_assert_num_queries(0):
        assert kind_round_stats(project=pairwise) is None
