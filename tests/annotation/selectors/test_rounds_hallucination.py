"""The loop's hallucination figures per policy (model version), against judgements counted by hand,
on Postgres: `kind_round_stats`, the kind's `round_stats` hook and the rounds API's payload.

A hallucination project with policies π0, π1 and π2 and two annotators who judge every task
(overlap 2). Tasks, each showing (position 0, position 1):

    e1a  evaluation, round 1   (π1 "a1" on E1, π0 "b1" on E1)
    e1b  evaluation, round 1   (π0 "b2" on E2, π1 "a2" on E2)
    e2a  evaluation, round 2   (π2 "c1" on E1, π1 "a3" on E1)
    t1   label, round 1        (π1 "s1" on T1, π1 "s2" on T1)
    imp  label, round 0        (two imported answers without a model version: no policy's)

The spans below are the whole data; each expected number is worked out beside its assertion.
"""

import pytest

from annotation import services
from annotation.models import ModelVersion, Prompt, Response, Role, Round
from annotation.selectors.rounds import judged_answers, kind_round_stats, round_payload, rounds_of
from annotation.services.round_stages import task_create
from tests.factories import ProjectFactory, UserFactory

pytestmark = pytest.mark.django_db

TEXT = "There are two red circles left of a blue square."  # 48 code points, ASCII


def span(response, start, end, category):
    return {"response": response, "start": start, "end": end, "category": category}


ANSWERS = {
    "u1": {
        "e1a": {"choice": "A", "spans": [span(1, 0, 5, "object"), span(1, 6, 10, "count")]},
        "e1b": {
            "choice": "B",
            "spans": [span(0, 0, 4, "object"), span(0, 5, 9, "object"), span(1, 0, 3, "attribute")],
        },
        "e2a": {"choice": "A", "spans": [span(1, 0, 4, "relation")]},
        "t1": {"choice": "A", "spans": [span(1, 0, 3, "count")]},
        "imp": {"choice": "A", "spans": [span(0, 0, 3, "object")]},
    },
    "u2": {
        "e1a": {"choice": "A", "spans": [span(1, 0, 5, "object")]},
        "e1b": {"choice": "B", "spans": []},
        "e2a": {
            "choice": "tie",
            "helpful_choice": "A",
            "spans": [span(0, 0, 4, "object"), span(1, 0, 4, "relation")],
        },
        "t1": {"choice": "tie", "helpful_choice": "tie", "spans": []},
        "imp": {"choice": "B", "spans": []},
    },
}


def looped_project(*, pi2_name="π2 vlm"):
    """The project above, judged; returns (project, {round: ModelVersion})."""
    project = ProjectFactory(kind="hallucination", overlap=2, creator=UserFactory(is_staff=True))
    users = {}
    for name in ANSWERS:
        users[name] = UserFactory(username=f"{name}-{project.pk}")
        services.membership_set(project=project, username=users[name].username, role=Role.ANNOTATOR)
    policies = {}
    for number, name in [(0, "π0 (base)"), (1, "π1 vlm"), (2, pi2_name)]:
        policies[number] = ModelVersion.objects.create(
            project=project, kind="policy", round=number, name=name, parent=policies.get(number - 1)
        )
    # A reward version answers nothing: it must not show up as a policy.
    ModelVersion.objects.create(project=project, kind="reward", round=1, name="reward r1")
    for number in (1, 2):
        Round.objects.create(
            project=project, number=number, status="succeeded", policy_version=policies[number]
        )
    prompts = {
        key: Prompt.objects.create(
            project=project,
            messages=[{"role": "user", "content": f"What is in picture {key}?"}],
            split=split,
        )
        for key, split in [("E1", "eval"), ("E2", "eval"), ("T1", "train"), ("I", "train")]
    }

    def answer(prompt, version):
        return Response.objects.create(
            prompt=prompts[prompt],
            text=TEXT,
            model_name=version.name if version else "imported-model",
            model_version=version,
        )

    pi0, pi1, pi2 = policies[0], policies[1], policies[2]
    layout = {
        "e1a": ("E1", 1, "evaluation", [answer("E1", pi1), answer("E1", pi0)]),
        "e1b": ("E2", 1, "evaluation", [answer("E2", pi0), answer("E2", pi1)]),
        "e2a": ("E1", 2, "evaluation", [answer("E1", pi2), answer("E1", pi1)]),
        "t1": ("T1", 1, "label", [answer("T1", pi1), answer("T1", pi1)]),
        "imp": ("I", 0, "label", [answer("I", None), answer("I", None)]),
    }
    by_task = {}
    for key, (prompt, number, purpose, shown) in layout.items():
        task = task_create(
            project, prompts[prompt], shown, round_number=number, priority=0.0, purpose=purpose
        )
        by_task[task.pk] = key
    for name, user in users.items():
        for i in range(len(layout)):
            lease = services.assignment_lease(annotator=user, project=project)
            data = ANSWERS[name][by_task[lease.task_id]]
            services.judgement_submit(assignment=lease, data=data, idempotency_key=f"{name}-{i}")
    return project, policies


def test_rates_and_span_counts_per_model_version_match_the_hand_count():
    project, policies = looped_project()
    stats = kind_round_stats(project=project)
    assert stats.categories[:4] == ["object", "attribute", "count", "relation"]
    figures = {p.round: p for p in stats.policies}
    assert list(figures) == [0, 1, 2]  # the reward version is no policy
    assert {r: f.model_version for r, f in figures.items()} == {
        r: v.pk for r, v in policies.items()
    }

    # π0, held out: e1a position 1 (u1 object + count, u2 object), e1b position 0 (u1 two object
    # spans, u2 none) -> 4 judged answers of 2 answers, 3 with a span; object in 3, count in 1;
    # spans: object 1 + 1 + 2 = 4, count 1. π0 answers no training prompt: all tasks = held out.
    held = figures[0].held_out
    assert (held.answers, held.judged) == (2, 4)
    assert held.hallucinated == pytest.approx(3 / 4)
    assert held.by_category["object"] == pytest.approx(3 / 4)
    assert held.by_category["count"] == pytest.approx(1 / 4)
    assert held.by_category["attribute"] == held.by_category["relation"] == 0
    assert held.spans == {**dict.fromkeys(stats.categories, 0), "object": 4, "count": 1}
    assert figures[0].all_tasks == held

    # π1, held out: e1a position 0 (none, none), e1b position 1 (u1 attribute, u2 none), e2a
    # position 1 (u1 relation, u2 relation) -> 6 judged of 3 answers, 3 with a span.
    held = figures[1].held_out
    assert (held.answers, held.judged) == (3, 6)
    assert held.hallucinated == pytest.approx(3 / 6)
    assert held.by_category["attribute"] == pytest.approx(1 / 6)
    assert held.by_category["relation"] == pytest.approx(2 / 6)
    assert held.by_category["object"] == held.by_category["count"] == 0
    assert {c: n for c, n in held.spans.items() if n} == {"attribute": 1, "relation": 2}
    # All tasks add t1's two answers, each judged twice: s2 has u1's count span -> 10 judged of
    # 5 answers, 4 with a span; count 1 of 10. The imported task's spans belong to no policy.
    every = figures[1].all_tasks
    assert (every.answers, every.judged) == (5, 10)
    assert every.hallucinated == pytest.approx(4 / 10)
    assert every.by_category["count"] == pytest.approx(1 / 10)
    assert {c: n for c, n in every.spans.items() if n} == {
        "attribute": 1,
        "relation": 2,
        "count": 1,
    }

    # π2, held out: e2a position 0 (u1 none, u2 object) -> 2 judged of 1 answer, 1 with a span.
    held = figures[2].held_out
    assert (held.answers, held.judged, held.hallucinated) == (1, 2, pytest.approx(1 / 2))
    assert held.by_category["object"] == pytest.approx(1 / 2)
    assert held.spans["object"] == 1 and sum(held.spans.values()) == 1


def test_rounds_payload_carries_both_sides_of_each_rounds_evaluation():
    project, policies = looped_project()
    stats = kind_round_stats(project=project)
    payloads = {row.number: round_payload(row, stats) for row in rounds_of(project=project)}
    one, two = payloads[1], payloads[2]
    assert one["policy_stats"]["model_version"] == policies[1].pk
    assert one["policy_stats"]["name"] == "π1 vlm" and one["policy_stats"]["round"] == 1
    # Round 1's other side is π0: its figures reach the API there.
    assert one["previous_policy_stats"]["model_version"] == policies[0].pk
    assert one["previous_policy_stats"]["held_out"] == {
        "answers": 2,
        "judged": 4,
        "hallucinated": 0.75,
        "by_category": {
            **dict.fromkeys(stats.categories, 0.0),
            "object": 0.75,
            "count": 0.25,
        },
        "spans": {**dict.fromkeys(stats.categories, 0), "object": 4, "count": 1},
    }
    assert two["policy_stats"]["model_version"] == policies[2].pk
    assert two["previous_policy_stats"] == one["policy_stats"]
    assert two["policy_stats"]["all_tasks"]["spans"]["object"] == 1


def test_the_rounds_api_returns_the_figures(client):
    project, policies = looped_project()
    manager = UserFactory()
    services.membership_set(project=project, username=manager.username, role=Role.MANAGER)
    client.force_login(manager)
    response = client.get(f"/api/v1/projects/{project.pk}/rounds")
    assert response.status_code == 200, response.content
    rounds = {r["number"]: r for r in response.json()}
    assert rounds[1]["policy_stats"]["held_out"]["judged"] == 6
    assert rounds[1]["previous_policy_stats"]["name"] == "π0 (base)"
    assert rounds[2]["policy_stats"]["held_out"]["hallucinated"] == 0.5


def test_only_tasks_showing_a_model_versions_answer_are_read():
    project, _ = looped_project()
    judged = list(judged_answers(project=project))
    # 4 versioned tasks × 2 annotators; the imported task is left out.
    assert len(judged) == 8
    assert {row.purpose for row in judged} == {"evaluation", "label"}
    assert all(len(row.slots) == 2 and all(v for _, v in row.slots) for row in judged)


def test_a_category_since_removed_from_the_settings_still_counts():
    project, _ = looped_project()
    project.kind_settings = {"categories": ["attribute", "relation"], "show_context": True}
    project.save(update_fields=["kind_settings"])
    stats = kind_round_stats(project=project)
    # The settings' categories first, then those only found in spans, sorted.
    assert stats.categories == ["attribute", "relation", "count", "object"]
    assert stats.policies[0].held_out.spans["object"] == 4


def test_no_policy_yet_and_a_pairwise_project_measure_nothing(django_assert_num_queries):
    empty = ProjectFactory(kind="hallucination")
    stats = kind_round_stats(project=empty)
    assert stats.policies == [] and stats.policy_json(1) is None
    assert stats.previous_policy_json(1) is None
    pairwise = ProjectFactory()
    with django_assert_num_queries(0):
        assert kind_round_stats(project=pairwise) is None
