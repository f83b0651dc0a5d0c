import pytest

from annotation import services
from annotation.errors import Conflict, InvalidInput
from annotation.models import Judgement, Project, Role, Task
from tests.factories import ProjectFactory, UserFactory, import_tasks

pytestmark = pytest.mark.django_db


@pytest.fixture
def lease():
    project = ProjectFactory(overlap=1)
    import_tasks(project, 2)
    user = UserFactory()
    services.membership_set(project=project, username=user.username, role=Role.ANNOTATOR)
    return services.assignment_lease(annotator=user, project=project)


def test_submit_stores_payload_and_counts(lease):
    judgement, created = services.judgement_submit(
        assignment=lease,
        data={
            "choice": "B",
            "strength": 3,
            "rationale": "  B cites a source ",
            "time_spent_ms": 4200,
        },
        idempotency_key="key-1",
    )
    assert created
    assert judgement.payload == {"choice": "B", "strength": 3}
    assert (
        judgement.answer == "B"
        and judgement.rationale == "B cites a source"
        and judgement.time_spent_ms == 4200
    )
    task = Task.objects.get(pk=lease.task_id)
    assert (task.judgement_count, task.live_leases, task.is_complete) == (1, 0, True)
    assert task.answer_counts == {"B": 1}


def test_answer_counts_follow_every_judgement_of_a_task():
    project = ProjectFactory(overlap=3)
    import_tasks(project, 1)
    for n, choice in enumerate(["A", "tie", "A"]):
        user = UserFactory()
        services.membership_set(project=project, username=user.username, role=Role.ANNOTATOR)
        assignment = services.assignment_lease(annotator=user, project=project)
        data = {"choice": choice, "strength": 1} if choice == "A" else {"choice": choice}
        services.judgement_submit(assignment=assignment, data=data, idempotency_key=f"k{n}")
    task = Task.objects.get(project=project)
    assert task.answer_counts == {"A": 2, "tie": 1} and task.judgement_count == 3


def test_same_key_twice_returns_the_first_judgement(lease):
    first, created = services.judgement_submit(
        assignment=lease, data={"choice": "A", "strength": 1}, idempotency_key="k"
    )
    again, created_again = services.judgement_submit(
        assignment=lease, data={"choice": "B", "strength": 3}, idempotency_key="k"
    )
    assert created and not created_again and again.pk == first.pk
    assert Judgement.objects.count() == 1
    assert Task.objects.get(pk=lease.task_id).judgement_count == 1


def test_second_judgement_with_another_key_is_a_conflict(lease):
    services.judgement_submit(
        assignment=lease, data={"choice": "A", "strength": 1}, idempotency_key="k1"
    )
    with pytest.raises(Conflict):
        services.judgement_submit(
            assignment=lease, data={"choice": "A", "strength": 1}, idempotency_key="k2"
        )
    assert Judgement.objects.count() == 1


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"choice": "C", "strength": 1}, "choice"),
        ({"choice": "A"}, "strength"),
        ({"choice": "A", "strength": 4}, "strength"),
        ({"choice": "A", "strength": True}, "strength"),
        ({"choice": "A", "strength": 1, "rationale": 5}, "rationale"),
        ({"choice": "A", "strength": 1, "time_spent_ms": -1}, "time_spent_ms"),
    ],
)
def test_bad_payloads_name_the_field_and_write_nothing(lease, data, field):
    with pytest.raises(InvalidInput) as error:
        services.judgement_submit(assignment=lease, data=data, idempotency_key="k")
    assert error.value.errors[0]["field"] == field
    assert Judgement.objects.count() == 0
    assert Task.objects.get(pk=lease.task_id).live_leases == 1


def test_tie_and_both_bad_carry_no_strength(lease):
    judgement, _ = services.judgement_submit(
        assignment=lease, data={"choice": "tie", "strength": 3}, idempotency_key="k"
    )
    assert judgement.payload == {"choice": "tie", "strength": None}


def test_missing_idempotency_key_is_refused(lease):
    with pytest.raises(InvalidInput):
        services.judgement_submit(
            assignment=lease, data={"choice": "A", "strength": 1}, idempotency_key=""
        )


def test_an_archived_project_refuses_submissions_and_writes_nothing(lease):
    Project.objects.filter(pk=lease.project_id).update(archived=True)
    with pytest.raises(Conflict, match="archived"):
        services.judgement_submit(
            assignment=lease, data={"choice": "A", "strength": 1}, idempotency_key="k"
        )
    lease.refresh_from_db()
    task = Task.objects.get(pk=lease.task_id)
    assert lease.status == "leased" and not Judgement.objects.exists()
    assert (task.judgement_count, task.live_leases, task.is_complete) == (0, 1, False)
