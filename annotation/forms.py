"""Forms of the htmx pages. They parse; the rules live in the services, whose errors land back on
the form's fields (see `add_service_errors`), so the pages and the API refuse the same things with
the same words."""

from dataclasses import dataclass, fields
from typing import Any

from django import forms

from .errors import TandemError
from .feedback import MAX_RATIONALE_CHARS, SCHEMAS, STRENGTH_LABELS
from .loop import ALGORITHMS, QUEUES, SELECTIONS, LoopSettings
from .models import FeedbackKind, Role


@dataclass(frozen=True)
class Option:
    value: str
    label: str
    key: str


class JudgementForm(forms.Form):
    # The keyboard shortcut of each option is declared here once; the template writes it into a
    # data-key attribute that tandem.js reads, and into the legend the annotator sees.
    CHOICE_OPTIONS = (
        Option("A", "A is better", "1"),
        Option("B", "B is better", "2"),
        Option("tie", "Tie", "3"),
        Option("both_bad", "Both bad", "4"),
    )
    STRENGTH_OPTIONS = tuple(
        Option(str(value), label, key)
        for (value, label), key in zip(STRENGTH_LABELS.items(), "qwe", strict=True)
    )

    choice = forms.CharField(required=False)
    strength = forms.TypedChoiceField(
        choices=[(o.value, o.label) for o in STRENGTH_OPTIONS],
        coerce=int,
        required=False,
        empty_value=None,
    )
    rationale = forms.CharField(
        required=False,
        strip=False,
        max_length=MAX_RATIONALE_CHARS,
        widget=forms.Textarea(
            attrs={
                "rows": 2,
                "data-key": "r",
                "placeholder": "Why? (optional, but it helps reviewers)",
            }
        ),
    )
    # The column is a 32-bit integer; a larger value would fail in the database, not here.
    time_spent_ms = forms.IntegerField(
        required=False, min_value=0, max_value=2**31 - 1, widget=forms.HiddenInput
    )
    idempotency_key = forms.CharField(max_length=128, widget=forms.HiddenInput)

    def payload(self) -> dict:
        data = self.cleaned_data
        return {
            "choice": data["choice"],
            "strength": data["strength"],
            "rationale": data["rationale"],
            "time_spent_ms": data["time_spent_ms"],
        }


class ProjectCreateForm(forms.Form):
    name = forms.CharField(max_length=200)
    # Only kinds whose schema exists are offered: the others would be refused by the service.
    kind = forms.ChoiceField(
        choices=[(k.value, k.label) for k in FeedbackKind if k.value in SCHEMAS],
        initial=FeedbackKind.PAIRWISE,
    )
    overlap = forms.IntegerField(
        initial=1, help_text="Judgements wanted per task, from distinct annotators."
    )
    lease_seconds = forms.IntegerField(
        initial=600, help_text="How long a task stays with one annotator before it returns."
    )
    instructions = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 8}),
        help_text="Markdown. Shown to annotators at any time while they work.",
    )


class ImportForm(forms.Form):
    file = forms.FileField(
        label="JSONL file",
        help_text='One task a line: {"prompt": ..., "responses": [..., ...], "id"?: ...}',
        widget=forms.ClearableFileInput(attrs={"accept": ".jsonl,.ndjson,.json,.txt"}),
    )


class MemberForm(forms.Form):
    username = forms.CharField(max_length=150)
    role = forms.ChoiceField(choices=Role.choices, initial=Role.ANNOTATOR)
    # Set by the members table's role forms: they change an existing member and must not add back
    # someone removed in another tab.
    existing = forms.BooleanField(required=False, widget=forms.HiddenInput)


class MemberRemoveForm(forms.Form):
    username = forms.CharField(max_length=150)


_LOOP_HELP = {f.name: f.metadata.get("help", "") for f in fields(LoopSettings)}


def _choices(values: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(v, v) for v in values]


class LoopSettingsForm(forms.Form):
    """The loop settings a manager edits on the dashboard; ranges are checked by LoopSettings, so
    the page and PATCH /api/v1/projects/<id>/loop refuse the same values with the same words."""

    enabled = forms.BooleanField(required=False, label="Start rounds automatically")
    policy_model = forms.CharField(required=False, max_length=500, label="Base policy")
    reward_backbone = forms.CharField(max_length=500)
    algorithm = forms.ChoiceField(choices=_choices(ALGORITHMS))
    samples_per_prompt = forms.IntegerField(label="Samples per prompt (K)")
    trigger_judgements = forms.IntegerField(label="Judgements that start a round")
    human_share = forms.FloatField(label="Human share")
    selection = forms.ChoiceField(choices=_choices(SELECTIONS))
    queue = forms.ChoiceField(choices=_choices(QUEUES))
    prompts_per_round = forms.IntegerField()
    eval_prompts = forms.IntegerField(label="Evaluation prompts")
    ensemble_members = forms.IntegerField()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name, field in self.fields.items():
            field.help_text = _LOOP_HELP.get(name, "")
        # "Loop on" beside "rounds start by hand" read as a contradiction: the switch only says
        # whether rounds also start by themselves; the start button works either way.
        self.fields["enabled"].help_text = (
            "On: a round also starts by itself once the judgement count below is reached "
            "(0 = never). Rounds can always be started by hand."
        )

    @classmethod
    def initial_from(cls, settings: LoopSettings) -> dict[str, Any]:
        return {name: getattr(settings, name) for name in cls.base_fields}


def add_service_errors(form: forms.Form, exc: TandemError) -> None:
    """Puts a service's field errors on the form's fields; anything else becomes a form error."""
    placed = False
    for error in exc.errors:
        field = error.get("field")
        if field in form.fields:
            # A service that stops at its first error words it fully in its message ("overlap:
            # must be between 1 and 50") and only tersely in the list ("1..50").
            if len(exc.errors) == 1:
                message = exc.message.removeprefix(f"{field}: ")
            else:
                message = error.get("message") or exc.message
            form.add_error(field, message)
            placed = True
    if not placed:
        form.add_error(None, exc.message)
