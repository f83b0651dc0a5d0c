"""`manage.py seed_demo_loop`: a demo project whose online loop has already run one round.

On the oracle's synthetic task with tiny CPU models: π_0 is warm-started, a simulated annotator
labels the round-0 pairs, and round 1 runs in this process (reward ensemble, DPO, generation,
selection). The demo annotators then find π_1's pairs and the blind π_1-vs-π_0 evaluation in
their queue. Idempotent: a project that already has a finished round is left alone.
"""

import secrets
import time

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from annotation import services
from annotation.models import Project, Role, Round
from annotation.services import rounds, simulation

PROJECT_NAME = "Demo: online loop (warm-words oracle)"


class Command(BaseCommand):
    help = (
        "Creates a loop project on tiny CPU models and runs its first round (a few minutes on CPU)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--annotators", nargs="*", default=["ann1", "ann2"], help="users to add as annotators"
        )
        parser.add_argument("--manager", default="admin", help="the project's creator and manager")

    def handle(self, *args, annotators, manager, **options):
        User = get_user_model()
        creator = User.objects.filter(username=manager).first()
        if creator is None:
            raise CommandError(f"no user '{manager}': run seed_demo first")
        project = Project.objects.filter(name=PROJECT_NAME).first()
        if project is not None and project.rounds.filter(status=Round.Status.SUCCEEDED).exists():
            self.stdout.write(f"'{PROJECT_NAME}' has run its first round already.")
            return
        started = time.monotonic()
        if project is None:
            self.stdout.write(
                "Loop demo: warm-starting π0 on the warm-words task (tiny CPU model)..."
            )
            project = simulation.oracle_project_setup(
                creator=creator, name=PROJECT_NAME, prompts_per_round=64, eval_prompts=16
            )
        oracle_user = User.objects.filter(username="oracle-demo").first() or services.user_create(
            username="oracle-demo", password=secrets.token_urlsafe(24)
        )
        services.membership_set(project=project, username=oracle_user.username, role=Role.ANNOTATOR)
        given = simulation.oracle_label_queue(project=project, annotator=oracle_user)
        self.stdout.write(
            f"Loop demo: a simulated annotator gave {given} judgements; running round 1..."
        )
        loop_round = project.rounds.filter(status__in=Round.ACTIVE).first() or rounds.round_start(
            project=project
        )
        loop_round = rounds.round_run_inline(loop_round=loop_round)
        if loop_round.status != Round.Status.SUCCEEDED:
            raise CommandError(f"round 1 of the loop demo failed: {loop_round.error}")
        for username in annotators:
            if User.objects.filter(username=username).exists():
                services.membership_set(project=project, username=username, role=Role.ANNOTATOR)
        accuracy = (
            f"{loop_round.reward_accuracy:.2f}" if loop_round.reward_accuracy is not None else "-"
        )
        self.stdout.write(
            f"Loop demo: round 1 done in {time.monotonic() - started:.0f}s (reward accuracy {accuracy}); "
            f"{project.tasks.filter(round=1).count()} new tasks from π1 wait in the queue."
        )
