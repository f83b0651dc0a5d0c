import math

import pytest

from annotation import services
from annotation.models import ModelVersion, Response, Role, Task, TaskResponse
from annotation.selectors.rounds import human_win_rates, rounds_of, wilson_interval
from tests.factories import ProjectFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_wilson_interval_matches_hand_computed_values():
    low, high = wilson_interval(8, 10)
    # p = 0.8, n = 10, z = 1.96: centre (0.8 + 0.19208) / 1.38416, half 1.96 * sqrt(0.016 + 0.0096040) / 1.38416
    assert math.isclose(low, 0.4902, abs_tol=1e-3) and math.isclose(high, 0.9433, abs_tol=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_win_rate_counts_blind_sides_and_ties_as_half():
    project = ProjectFactory()
    new = ModelVersion.objects.create(project=project, kind="policy", round=1, name="π1")
    old = ModelVersion.objects.create(project=project, kind="policy", round=0, name="π0")
    annotators = [UserFactory() for _ in range(4)]
    for user in annotators:
        services.membership_set(project=project, username=user.username, role=Role.ANNOTATOR)
    from annotation.models import Prompt

    prompt = Prompt.objects.create(
        project=project, messages=[{"role": "user", "content": "hi"}], split="eval"
    )
    choices = []
    for new_first, choice in [(True, "A"), (False, "A"), (False, "B"), (True, "tie")]:
        task = Task.objects.create(
            project=project,
            prompt=prompt,
            kind="pairwise",
            round=1,
            purpose="evaluation",
            overlap=1,
        )
        sides = [new, old] if new_first else [old, new]
        for position, version in enumerate(sides):
            response = Response.objects.create(
                prompt=prompt, text=f"{version.name}", model_version=version
            )
            TaskResponse.objects.create(task=task, response=response, position=position)
        choices.append((task, choice))
    for user, (task, choice) in zip(annotators, choices, strict=True):
        lease = services.assignment_lease(annotator=user, project=project)
        assert lease.task_id == task.pk
        services.judgement_submit(
            assignment=lease, data={"choice": choice, "strength": 1}, idempotency_key="k"
        )
    rate = human_win_rates(project=project)[1]
    # new wins (A, new first), loses (A, old first), wins (B, old first), tie: (1 + 0 + 1 + 0.5) / 4
    assert rate.n == 4 and rate.rate == pytest.approx(0.625)
    assert rounds_of(project=project) == []
