"""The background jobs a manager watches: imports and outcome simulations, with their progress.

A job row is written by the services that run it (annotation/services/imports.py, outcomes.py);
its `updated_at` lets a sweep tell a slow job from one whose worker died.
"""

from django.conf import settings
from django.db import models


class ImportJob(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        VALIDATING = "validating", "Validating"
        IMPORTING = "importing", "Importing"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    project = models.ForeignKey(
        "annotation.Project", on_delete=models.CASCADE, related_name="imports"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED)
    filename = models.CharField(max_length=300, blank=True)
    source_path = models.CharField(
        max_length=500, blank=True, help_text="Uploaded file waiting for the worker."
    )
    size_bytes = models.BigIntegerField(default=0)
    lines_total = models.PositiveIntegerField(default=0)
    lines_done = models.PositiveIntegerField(default=0)
    created = models.PositiveIntegerField(default=0)
    errors = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(
        auto_now=True, help_text="Last progress; a job silent for long died with its worker."
    )
    finished_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"import {self.pk} ({self.status})"


class OutcomeJob(models.Model):
    """Simulating the outcome of each response that came without one (the hindsight kind).

    Its own row rather than fields on ImportJob: a simulation can be started by hand, with no import.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    project = models.ForeignKey(
        "annotation.Project", on_delete=models.CASCADE, related_name="outcome_jobs"
    )
    import_job = models.ForeignKey(
        ImportJob, null=True, blank=True, on_delete=models.SET_NULL, related_name="outcome_jobs"
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    total = models.PositiveIntegerField(default=0, help_text="Responses waiting when it started.")
    done = models.PositiveIntegerField(default=0, help_text="Outcomes written so far.")
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(
        auto_now=True, help_text="Last progress; a job silent for long died with its worker."
    )
    finished_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"outcome simulation {self.pk} ({self.status})"
