import re
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from annotation import services
from annotation.management.commands import seed_demo as seed_demo_module
from annotation.management.commands.seed_demo import DEFAULT_PROJECT_NAME, DEMO_USERS
from annotation.models import (
    FeedbackKind,
    ImportJob,
    Membership,
    Project,
    Prompt,
    Response,
    Role,
    Task,
    TaskResponse,
)
from tests.annotation.image_support import media  # noqa: F401  (the fixture)

# seed_demo stores the hallucination project's images: under a media root of the test's own.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("media")]
USERNAMES = [username for username, _, _ in DEMO_USERS]


def seed(*args: str) -> str:
    out = StringIO()
    call_command("seed_demo", *args, stdout=out)
    return out.getvalue()


def printed_passwords(out: str) -> dict[str, str]:
    """The banner's rows under `user    password` that show a password."""
    table = out[out.index("user    password") :]
    found = {}
    for username in USERNAMES:
        match = re.search(rf"^\|\s+{username}\s+(\S+)", table, re.MULTILINE)
        if match and not match.group(1).startswith("("):
            found[username] = match.group(1)
    return found


def counts() -> dict[str, int]:
    models = (get_user_model(), Project, Membership, Prompt, Response, Task, TaskResponse)
    return {m.__name__: m.objects.count() for m in (*models, ImportJob)}


def test_seeds_users_project_and_tasks():
    out = seed()

    project = Project.objects.get(name=DEFAULT_PROJECT_NAME)
    assert project.kind == FeedbackKind.PAIRWISE
    assert project.overlap == 2
    assert project.lease_seconds == 600
    assert "Keyboard shortcuts" in project.instructions

    tasks = Task.objects.filter(project=project)
    assert tasks.count() >= 50
    assert set(tasks.values_list("overlap", flat=True)) == {2}
    assert all(t.slots.count() == 2 for t in tasks.prefetch_related("slots"))
    prompts = list(Prompt.objects.filter(project=project))
    assert all(p.messages[-1]["role"] == "user" for p in prompts)
    assert sum(len(p.messages) > 1 for p in prompts) >= 12
    assert all(p.metadata.get("topic") for p in prompts)

    User = get_user_model()
    admin = User.objects.get(username="admin")
    assert admin.is_staff and admin.is_superuser
    roles = dict(project.memberships.values_list("user__username", "role"))
    assert roles == {"admin": Role.MANAGER, "ann1": Role.ANNOTATOR, "ann2": Role.ANNOTATOR}
    for username in ("ann1", "ann2"):
        annotator = User.objects.get(username=username)
        assert not annotator.is_staff and not annotator.is_superuser
    passwords = printed_passwords(out)
    assert set(passwords) == set(USERNAMES)
    for username, password in passwords.items():
        assert User.objects.get(username=username).check_password(password)
        assert len(password) >= 16
    assert len(set(passwords.values())) == len(passwords)
    assert "http://127.0.0.1:8000/" in out


def test_second_run_changes_nothing_and_prints_no_password():
    first = printed_passwords(seed())
    before = counts()
    out = seed()
    assert counts() == before
    assert "Imported" not in out
    # Printed once: the second banner shows none, and the first ones still work.
    assert printed_passwords(out) == {}
    for password in first.values():
        assert password not in out
    User = get_user_model()
    for username, password in first.items():
        assert User.objects.get(username=username).check_password(password)


def test_passwords_are_random_per_install():
    first = printed_passwords(seed())
    # Back to an empty database, as on another install.
    ImportJob.objects.all().delete()
    Project.objects.all().delete()
    get_user_model().objects.all().delete()
    assert sum(counts().values()) == 0
    second = printed_passwords(seed())
    assert set(first) == set(second) == set(USERNAMES)
    for username in USERNAMES:
        assert first[username] != second[username]


def test_no_password_constant_in_the_source():
    source = Path(seed_demo_module.__file__).read_text()
    # The old constants, and any quoted string handed to a password argument.
    assert '-demo"' not in source
    assert not re.search(r"password\s*=\s*[\"']", source)
    assert not re.search(r"set_password\(\s*[\"']", source)


def test_both_annotators_can_lease_the_same_task():
    seed()
    project = Project.objects.get(name=DEFAULT_PROJECT_NAME)
    User = get_user_model()
    first = services.assignment_lease(annotator=User.objects.get(username="ann1"), project=project)
    assert first is not None
    # Overlap 2: the second annotator is offered the same task, not the next one.
    second = services.assignment_lease(annotator=User.objects.get(username="ann2"), project=project)
    assert second is not None
    assert second.task_id == first.task_id


def test_changed_password_is_kept_unless_reset():
    first = printed_passwords(seed())
    ann1 = get_user_model().objects.get(username="ann1")
    ann1.set_password("my-own-password-1")
    ann1.save()

    out = seed()
    ann1.refresh_from_db()
    assert ann1.check_password("my-own-password-1")
    assert printed_passwords(out) == {}

    reset = printed_passwords(seed("--reset-passwords"))
    assert set(reset) == set(USERNAMES)
    ann1.refresh_from_db()
    assert ann1.check_password(reset["ann1"])
    assert not ann1.check_password("my-own-password-1")
    assert reset["admin"] != first["admin"]


def test_another_project_name_reuses_the_users():
    seed()
    users = get_user_model().objects.count()
    seed("--project-name", "Second demo")
    assert get_user_model().objects.count() == users
    second = Project.objects.get(name="Second demo")
    assert second.tasks.count() == Task.objects.filter(project__name=DEFAULT_PROJECT_NAME).count()
