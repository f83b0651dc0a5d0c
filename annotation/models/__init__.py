"""Tandem's data model: projects of feedback, the tasks annotators are shown, their leases and judgements,
and the model versions and training runs of the online loop.

Rows carry no behaviour: every write goes through `annotation.services`, every rule-bearing read
through `annotation.selectors`.
"""

from django.conf import settings
from django.db import models
from django.db.models import Q
from knox.models import AbstractAuthToken


class FeedbackKind(models.TextChoices):
    PAIRWISE = "pairwise", "Pairwise comparison"
    RANKING = "ranking", "k-way ranking"
    RATING = "rating", "Attribute rating"
    CRITIQUE = "critique", "Critique"
    HALLUCINATION = "hallucination", "Multimodal hallucination"
    HINDSIGHT = "hindsight", "Hindsight feedback"


class Role(models.TextChoices):
    ANNOTATOR = "annotator", "Annotator"
    REVIEWER = "reviewer", "Reviewer"
    MANAGER = "manager", "Manager"
    TRAINER = "trainer", "Trainer"


class Split(models.TextChoices):
    TRAIN = "train", "Train"
    EVAL = "eval", "Held-out evaluation"


class Project(models.Model):
    name = models.CharField(max_length=200)
    kind = models.CharField(
        max_length=20, choices=FeedbackKind.choices, default=FeedbackKind.PAIRWISE
    )
    instructions = models.TextField(blank=True, help_text="Markdown; rendered through a sanitizer.")
    overlap = models.PositiveSmallIntegerField(default=1, help_text="Judgements wanted per task.")
    lease_seconds = models.PositiveIntegerField(default=600, help_text="Seconds a lease lasts.")
    rubric = models.JSONField(default=list, blank=True, help_text="Rubric of rating projects.")
    kind_settings = models.JSONField(
        default=dict,
        blank=True,
        help_text="Settings of the project's feedback kind, validated by the kind's module.",
    )
    gold_ratio = models.FloatField(default=0.0, help_text="Share of gold items in the queue.")
    loop = models.JSONField(
        default=dict,
        blank=True,
        help_text="Online-loop settings: policy and reward model refs, algorithm, batch threshold, queue.",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    archived = models.BooleanField(default=False)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=20, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "user"], name="one_role_per_project")
        ]

    def __str__(self) -> str:
        return f"{self.user} · {self.role} · {self.project}"


class ModelVersion(models.Model):
    """A trained artifact (reward ensemble or policy) registered for a project's round."""

    class Kind(models.TextChoices):
        POLICY = "policy", "Policy"
        REWARD = "reward", "Reward ensemble"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="model_versions")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    round = models.PositiveIntegerField()
    name = models.CharField(max_length=200)
    artifact_path = models.CharField(max_length=500, blank=True)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL)
    metrics = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["project", "kind", "round"], name="one_version_per_round"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Prompt(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="prompts")
    messages = models.JSONField(help_text="The conversation so far: a list of {role, content}.")
    # NULL, not "", for "no id": the uniqueness constraint below must ignore prompts without one.
    external_id = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001
    metadata = models.JSONField(default=dict, blank=True)
    image = models.CharField(
        max_length=500,
        blank=True,
        help_text="sha256:<hex> of the image shown with the prompt (multimodal kinds).",
    )
    context = models.JSONField(
        default=dict, blank=True, help_text="Factual context: captions, reference answer."
    )
    split = models.CharField(max_length=5, choices=Split.choices, default=Split.TRAIN)
    # Facts the hindsight kind's outcome simulator reads; never shown to annotators, never exported.
    hidden = models.JSONField(default=dict, blank=True, db_default={})
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["project", "external_id"],
                condition=Q(external_id__isnull=False),
                name="unique_external_id_per_project",
            )
        ]

    def __str__(self) -> str:
        return f"prompt {self.pk}"


class Image(models.Model):
    """An image stored once by its content hash, after it decoded as JPEG, PNG or WebP.

    The stored bytes are the re-encoded image without its metadata (EXIF, GPS), so `sha256` is the
    hash of what is served. Who may see it is decided per project (`ProjectImage`), never here.
    """

    sha256 = models.CharField(max_length=64, primary_key=True)
    format = models.CharField(max_length=8, help_text="jpeg, png or webp: the verified format.")
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    size_bytes = models.PositiveIntegerField()
    file = models.CharField(max_length=300, help_text="Storage name of the image.")
    thumbnail = models.CharField(max_length=300, help_text="Storage name of its thumbnail.")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"sha256:{self.sha256[:12]}… ({self.format}, {self.width}×{self.height})"


class ProjectImage(models.Model):
    """An image a project holds: only its members may see it."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="images")
    image = models.ForeignKey(Image, on_delete=models.PROTECT, related_name="projects")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "image"], name="one_link_per_project_image")
        ]

    def __str__(self) -> str:
        return f"{self.project_id} · {self.image_id[:12]}"


class Response(models.Model):
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="responses")
    text = models.TextField()
    model_name = models.CharField(max_length=200, blank=True)
    model_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL
    )
    outcome = models.TextField(blank=True, db_default="", help_text="What happened when acted on.")
    outcome_source = models.CharField(
        max_length=10,
        blank=True,
        db_default="",
        choices=[("", "None yet"), ("imported", "Imported"), ("simulated", "Simulated")],
    )
    true_utility = models.FloatField(
        null=True,
        blank=True,
        help_text="What acting on it was worth to the user, written with the outcome by an exact "
        "world model only; null: unknown (imported utilities stay in the prompt's metadata).",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"response {self.pk}"


class Task(models.Model):
    """What one annotator is shown: a prompt and 2..k of its responses.

    The lease counters live on this row and change under its row lock, so the
    lease query never counts over the project (see DESIGN.md "Hot paths").
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="tasks")
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="tasks")
    kind = models.CharField(max_length=20, choices=FeedbackKind.choices)
    round = models.PositiveIntegerField(default=0)
    priority = models.FloatField(
        default=0.0, help_text="Higher is leased first (e.g. ensemble disagreement)."
    )
    overlap = models.PositiveSmallIntegerField(default=1)
    judgement_count = models.PositiveIntegerField(default=0)
    live_leases = models.PositiveIntegerField(
        default=0, help_text="Leases handed out and not yet submitted, skipped or reclaimed."
    )
    next_lease_expiry = models.DateTimeField(
        null=True, blank=True, help_text="Earliest expiry among the live leases."
    )
    is_complete = models.BooleanField(default=False)
    ready = models.BooleanField(
        default=True,
        db_default=True,
        help_text="Leased only when true: false while its responses wait for simulated outcomes.",
    )
    answer_counts = models.JSONField(
        default=dict,
        db_default=models.Value({}, output_field=models.JSONField()),
        blank=True,
        help_text="Judgements per answer ({'A': 2, 'B': 1}), kept by submit under the task lock.",
    )
    is_gold = models.BooleanField(default=False)
    gold_answer = models.JSONField(null=True, blank=True)
    purpose = models.CharField(
        max_length=10, choices=[("label", "Label"), ("evaluation", "Evaluation")], default="label"
    )
    auto_label = models.JSONField(
        null=True,
        blank=True,
        help_text="Set when the reward ensemble labelled this pair instead of a human: {choice, margin, reward_version}.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [
            # Matches the queue order exactly, and only over unfinished tasks,
            # so the lease query walks the head of a small index.
            models.Index(
                "project",
                models.F("priority").desc(),
                "id",
                condition=Q(is_complete=False),
                name="task_queue_order",
            ),
        ]

    def __str__(self) -> str:
        return f"task {self.pk}"


class TaskResponse(models.Model):
    """The responses of a task in the order they are shown (position 0 is A)."""

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="slots")
    response = models.ForeignKey(Response, on_delete=models.CASCADE, related_name="+")
    position = models.PositiveSmallIntegerField()

    class Meta:
        ordering = ["position"]
        constraints = [
            models.UniqueConstraint(fields=["task", "position"], name="one_response_per_position")
        ]

    def __str__(self) -> str:
        return f"task {self.task_id} slot {self.position}"


class Assignment(models.Model):
    class Status(models.TextChoices):
        LEASED = "leased", "Leased"
        SUBMITTED = "submitted", "Submitted"
        SKIPPED = "skipped", "Skipped"
        EXPIRED = "expired", "Expired"

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="assignments")
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="assignments"
    )
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.LEASED)
    leased_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            # An annotator never gets the same task twice, whatever happened to the first lease.
            models.UniqueConstraint(
                fields=["task", "annotator"], name="one_assignment_per_annotator"
            ),
        ]
        indexes = [
            models.Index(fields=["task", "status"], name="assignment_task_status"),
            # "Does this annotator already hold a live lease here?": asked on every lease.
            models.Index(
                fields=["annotator", "project"],
                condition=Q(status="leased"),
                name="assignment_live_per_annotator",
            ),
        ]

    def __str__(self) -> str:
        return f"assignment {self.pk}"


class Judgement(models.Model):
    """One annotator's answer to one task. Never updated after insert: exports rely on it.

    A kind with phases (`Kind.phases`) stores one row per phase of an assignment, the last one
    completing it; single-phase kinds store one row with phase "".
    """

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="judgements")
    assignment = models.ForeignKey(Assignment, on_delete=models.CASCADE, related_name="judgements")
    phase = models.CharField(max_length=10, blank=True, default="", db_default="")
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="judgements"
    )
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="judgements")
    kind = models.CharField(max_length=20, choices=FeedbackKind.choices)
    payload = models.JSONField(help_text="Kind-specific answer, validated by the kind's schema.")
    answer = models.CharField(
        max_length=64, blank=True, help_text="The comparable core of the payload, for agreement."
    )
    rationale = models.TextField(blank=True)
    time_spent_ms = models.PositiveIntegerField(null=True, blank=True)
    idempotency_key = models.CharField(max_length=128)
    late = models.BooleanField(
        default=False, help_text="Submitted after the lease expired; kept and counted."
    )
    # The inserting transaction's id on Postgres (0 elsewhere). Exports read in
    # (commit_seq, id) order up to the oldest running transaction, so a row that
    # commits late can never fall behind an export cursor.
    commit_seq = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["annotator", "idempotency_key"], name="one_judgement_per_key"
            ),
            models.UniqueConstraint(
                fields=["assignment", "phase"], name="one_judgement_per_assignment_phase"
            ),
        ]
        indexes = [
            models.Index(fields=["project", "commit_seq", "id"], name="judgement_export_order")
        ]

    def __str__(self) -> str:
        return f"judgement {self.pk}"


class Round(models.Model):
    """One turn of the online loop: fit the reward ensemble, train π_r, generate, select, evaluate.

    Its human win rate is derived from the judgements on its evaluation tasks, never stored.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    ACTIVE = (Status.QUEUED, Status.RUNNING)

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="rounds")
    number = models.PositiveIntegerField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    trigger = models.CharField(
        max_length=10, choices=[("auto", "Automatic"), ("manual", "Manual")], default="manual"
    )
    judgements = models.PositiveIntegerField(default=0, help_text="Human judgements trained on.")
    data_cursor = models.CharField(
        max_length=200, blank=True, help_text="Export cursor of the last judgement used."
    )
    reward_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    policy_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reward_accuracy = models.FloatField(null=True, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["project", "number"]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "number"], name="one_round_number_per_project"
            ),
            # At most one round of a project runs at a time, whatever races to start one.
            models.UniqueConstraint(
                fields=["project"],
                condition=Q(status__in=["queued", "running"]),
                name="one_active_round_per_project",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.project} round {self.number}"


class TrainingRun(models.Model):
    """One stage of a round, run as one Celery job: status, progress and log for the dashboard."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    round = models.ForeignKey(Round, on_delete=models.CASCADE, related_name="runs")
    stage = models.CharField(max_length=20)
    position = models.PositiveSmallIntegerField(default=0)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    attempts = models.PositiveSmallIntegerField(default=0)
    progress_step = models.PositiveIntegerField(default=0)
    progress_total = models.PositiveIntegerField(default=0)
    loss = models.FloatField(null=True, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    log = models.TextField(blank=True)
    error = models.TextField(blank=True)
    model_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL
    )
    heartbeat_at = models.DateTimeField(
        null=True, blank=True, help_text="Last progress report; a stale one means a dead worker."
    )
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["round", "position"]
        constraints = [models.UniqueConstraint(fields=["round", "stage"], name="one_run_per_stage")]

    def __str__(self) -> str:
        return f"{self.round} · {self.stage}"


class ApiToken(AbstractAuthToken):
    """An API token, stored as a digest (django-rest-knox), with a name its owner chose.

    `password_fingerprint` binds the token to the password it was issued under: a password change
    makes every older token fail without a write on each request.
    """

    name = models.CharField(max_length=100, blank=True)
    password_fingerprint = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"token {self.token_key} of {self.user_id}"


# The background jobs a manager watches (imports, simulated outcomes), kept in their own module.
from .jobs import ImportJob, OutcomeJob  # noqa: E402, F401
