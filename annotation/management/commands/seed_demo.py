"""`manage.py seed_demo`: the users, project and tasks a new install shows first.

Idempotent: a second run finds what the first made and changes nothing. Everything is written
through `annotation.services`, like any other client of the core.

Passwords are random, drawn when a user is created and printed that once: a demo left reachable
on a network must not open to a password anyone can read in this file. `--reset-passwords` draws
and prints new ones.
"""

import secrets
from pathlib import Path

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from annotation import services
from annotation.demo_hallucination import seed_hallucination_project
from annotation.models import FeedbackKind, ImportJob, Project, Role

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "demo_tasks.jsonl"
DEFAULT_PROJECT_NAME = "Demo: helpful answers"

DEMO_USERS = (
    # username, is_staff, role in the demo project (None: its creator, a manager)
    ("admin", True, None),
    ("ann1", False, Role.ANNOTATOR),
    ("ann2", False, Role.ANNOTATOR),
)


def demo_password() -> str:
    # 96 random bits, URL-safe, short enough to type from the banner.
    return secrets.token_urlsafe(12)


INSTRUCTIONS = """\
## Which answer is better?

You see a conversation and two candidate answers to its **last user message**, A and B.
Pick the one you would rather receive, judging in this order:

1. **Helpfulness**: does it answer what was actually asked, follow every instruction
   (length, format, audience, a system message's rules) and stay on point?
2. **Correctness**: are the facts, numbers and code right? A confident wrong answer is worse
   than a short right one.
3. **Harmlessness**: is it safe, honest and respectful? Unsafe advice outweighs polish.

Length is not quality: prefer the shorter answer when both are equally helpful.
Read the earlier turns of a conversation: the best answer fits its context.

### Strength

When you pick A or B, say by how much:

- **slightly better**: a small difference in tone, clarity or completeness;
- **clearly better**: one has a real flaw (a missed instruction, a minor error) the other avoids;
- **much better**: one is wrong, unsafe or useless and the other is good.

Choose **tie** when both are about equally good, and **both bad** when neither is acceptable.
Add a short rationale whenever the call was hard: it helps reviewers and the next round.

### Keyboard shortcuts

| key | action |
|---|---|
| `1` / `2` | A is better / B is better |
| `3` / `4` | tie / both bad |
| `q` / `w` / `e` | slightly / clearly / much better |
| `r` | write a rationale (`Esc` leaves the box) |
| `Enter` | submit (`Ctrl`+`Enter` while writing) |
| `s` | skip this task |
| `?` or `i` | show these instructions |
"""


class Command(BaseCommand):
    help = (
        "Creates demo users (random passwords, printed once), a pairwise project and a "
        "hallucination project with their tasks (idempotent)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--project-name", default=DEFAULT_PROJECT_NAME)
        parser.add_argument(
            "--reset-passwords",
            action="store_true",
            help="Give the demo users that already exist new random passwords (printed).",
        )
        parser.add_argument(
            "--url", default="http://127.0.0.1:8000/", help="Where the demo is served."
        )

    def handle(self, *args, project_name: str, reset_passwords: bool, url: str, **options):
        with transaction.atomic():
            users = {
                username: self._user(username, is_staff, reset=reset_passwords)
                for username, is_staff, _ in DEMO_USERS
            }
            admin = users["admin"][0]
            if not admin.is_superuser:
                admin.is_superuser = True
                admin.save(update_fields=["is_superuser"])

            project = Project.objects.filter(name=project_name.strip()).order_by("id").first()
            if project is None:
                project = services.project_create(
                    creator=admin,
                    name=project_name,
                    kind=FeedbackKind.PAIRWISE,
                    # Two judgements per task, so both demo annotators see every task and
                    # agreement has something to measure.
                    overlap=2,
                    lease_seconds=600,
                    instructions=INSTRUCTIONS,
                )
                self.stdout.write(f"Created project '{project.name}'.")
            for username, _, role in DEMO_USERS:
                if (
                    role is not None
                    and not project.memberships.filter(user__username=username, role=role).exists()
                ):
                    services.membership_set(project=project, username=username, role=role)

            if not project.tasks.exists():
                created = self._import(project, admin)
                self.stdout.write(f"Imported {created} demo tasks from {FIXTURE.name}.")

        # After the block above commits: its images' files are kept only once their rows commit.
        annotators = [name for name, _, role in DEMO_USERS if role == Role.ANNOTATOR]
        shapes, created = seed_hallucination_project(creator=admin, annotators=annotators)
        if created:
            self.stdout.write(f"Imported {created} hallucination tasks with drawn images.")

        self._banner(url, [project, shapes], users)

    def _user(
        self, username: str, is_staff: bool, *, reset: bool
    ) -> tuple[AbstractUser, str | None]:
        """Returns (user, the password it was given now, or None when it keeps its own)."""
        user = get_user_model().objects.filter(username=username).first()
        password = demo_password()
        if user is None:
            return services.user_create(
                username=username, password=password, is_staff=is_staff
            ), password
        if reset:
            user.set_password(password)
            user.save(update_fields=["password"])
            return user, password
        return user, None

    def _import(self, project: Project, admin: AbstractUser) -> int:
        with FIXTURE.open("rb") as stream:
            job = services.import_create(
                project=project,
                user=admin,
                stream=stream,
                size=FIXTURE.stat().st_size,
                filename=FIXTURE.name,
            )
        if job.status != ImportJob.Status.DONE:
            # The fixture is far below the inline size, so anything else is a broken fixture
            # (or a TANDEM_IMPORT_INLINE_BYTES set absurdly low).
            raise CommandError(f"demo import {job.pk} ended '{job.status}': {job.errors}")
        return job.created

    def _banner(self, url: str, projects: list[Project], users: dict) -> None:
        base = url.rstrip("/")
        lines = [
            "Tandem demo is ready",
            "",
            f"  open      {base}/",
            f"  admin     {base}/admin/",
            f"  API docs  {base}/api/docs/",
            *(
                f"  project   {project.name} ({project.tasks.count()} tasks, overlap {project.overlap})"
                for project in projects
            ),
            "",
            "  user    password",
        ]
        for username, _, _ in DEMO_USERS:
            password = users[username][1]
            lines.append(f"  {username:<7} {password or '(unchanged: shown only when it was set)'}")
        lines.append("")
        if any(password for _, password in users.values()):
            lines.append("Passwords are shown this once: note them now.")
        if not all(password for _, password in users.values()):
            lines.append(
                "Forgot one? `make demo-passwords` (seed_demo --reset-passwords) draws new ones."
            )
        width = max(len(line) for line in lines)
        rule = "+" + "-" * (width + 2) + "+"
        self.stdout.write(rule)
        for line in lines:
            self.stdout.write(f"| {line:<{width}} |")
        self.stdout.write(rule)
