"""Forms of the htmx pages. They parse; the rules live in the services, whose errors land back on
the form's fields (see `add_service_errors`), so the pages and the API refuse the same things with
the same words."""

import re
from dataclasses import fields
from typing import Any

from django import forms

from .errors import TandemError
from .feedback import MAX_RATIONALE_CHARS
from .kinds import registered
from .kinds.base import Kind, SettingField
from .loop import ALGORITHMS, QUEUES, SELECTIONS, LoopSettings
from .models import Role

# The first segment of an error's field path: "spans[2].start" -> "spans".
_FIELD_HEAD = re.compile(r"[^.\[]+")


class JudgementForm(forms.Form):
    """The core fields of the annotate form; the kind's own fields are read by
    `Kind.payload_from_form` and checked by the kind in the service, whose errors land in
    `kind_errors` beside the kind's fields (`Kind.form_fields`), or at the top of the form."""

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

    def __init__(self, *args: Any, kind: Kind, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kind = kind
        self.kind_errors: dict[str, list[str]] = {}

    def payload(self) -> dict:
        data = self.cleaned_data
        return {
            **self.kind.payload_from_form(self.data),
            "rationale": data["rationale"],
            "time_spent_ms": data["time_spent_ms"],
        }

    def kind_field(self, field: str | None) -> str | None:
        """The kind's page field an error of `field` belongs to, or None."""
        head = _FIELD_HEAD.match(field or "")
        return head.group() if head and head.group() in self.kind.form_fields else None


class ProjectCreateForm(forms.Form):
    name = forms.CharField(max_length=200)
    # Only registered kinds are offered: the others would be refused by the service.
    kind = forms.ChoiceField(choices=(), initial="pairwise")
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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["kind"].choices = [(k.name, k.label) for k in registered()]


class ImportForm(forms.Form):
    file = forms.FileField(
        label="JSONL file",
        help_text='One task a line: {"prompt": ..., "responses": [..., ...], "id"?: ...}',
        widget=forms.ClearableFileInput(attrs={"accept": ".jsonl,.ndjson,.json,.txt,.zip"}),
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


class SettingListField(forms.CharField):
    """A list setting typed in a textarea: one entry per line, or comma-separated."""

    widget = forms.Textarea(attrs={"rows": 6})
    # Far above any list a kind takes; a longer post is refused before it is split.
    MAX_CHARS = 10_000

    def prepare_value(self, value: Any) -> Any:
        return "\n".join(value) if isinstance(value, (list, tuple)) else value

    def to_python(self, value: Any) -> list[str]:
        text = super().to_python(value)
        if len(text) > self.MAX_CHARS:
            raise forms.ValidationError(f"at most {self.MAX_CHARS} characters")
        return [entry.strip() for entry in re.split(r"[,\n]", text) if entry.strip()]


# A kind-settings error's field: "kind_settings.categories[2]" -> ("categories", "2").
_SETTING_PATH = re.compile(r"kind_settings\.([^.\[]+)(?:\[(\d+)\])?")


class KindSettingsForm(forms.Form):
    """A kind's project settings as the project page edits them, built from
    `Kind.settings_fields()`; the kind's `clean_settings` (in the service) checks the values.
    With `read_only` every field is disabled: the page shows the values and takes no change."""

    prefix = "settings"

    def __init__(
        self, *args: Any, kind: Kind, settings: dict, read_only: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(*args, initial={}, **kwargs)
        for setting in kind.settings_fields():
            field = _setting_field(setting)
            field.disabled = read_only
            self.fields[setting.name] = field
            self.initial[setting.name] = settings.get(setting.name)

    def settings(self) -> dict[str, Any]:
        return dict(self.cleaned_data)

    def place(self, path: str | None) -> tuple[str, str] | None:
        """(the form field, how to point at the entry) for a service error's field path, or None
        when the error is not about one of the form's settings."""
        found = _SETTING_PATH.fullmatch(path or "")
        if not found or found.group(1) not in self.fields:
            return None
        name, index = found.groups()
        if index is None:
            return name, ""
        entries = (getattr(self, "cleaned_data", None) or {}).get(name) or []
        i = int(index)
        shown = f" ({entries[i]!r})" if i < len(entries) else ""
        return name, f"entry {i + 1}{shown}"


def _setting_field(setting: SettingField) -> forms.Field:
    common = {"label": setting.label, "help_text": setting.help, "required": False}
    if setting.type == "list":
        return SettingListField(**common)
    if setting.type == "bool":
        return forms.BooleanField(**common)
    return forms.CharField(max_length=SettingListField.MAX_CHARS, **common)


def add_service_errors(form: forms.Form, exc: TandemError) -> None:
    """Puts a service's field errors on the form's fields; anything else becomes a form error."""
    placed = False
    for error in exc.errors:
        field = error.get("field")
        if isinstance(form, JudgementForm) and (kind_field := form.kind_field(field)):
            # Shown beside the kind's own field, worded in full as below.
            message = (
                exc.message.removeprefix(f"{field}: ")
                if len(exc.errors) == 1
                else error.get("message") or exc.message
            )
            if field != kind_field:
                message = f"{field}: {message}"
            form.kind_errors.setdefault(kind_field, []).append(message)
            placed = True
        elif isinstance(form, KindSettingsForm) and (placed_on := form.place(field)):
            name, entry = placed_on
            message = error.get("message") or exc.message
            form.add_error(name, f"{entry}: {message}" if entry else message)
            placed = True
        elif field in form.fields:
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
