"""The online loop's data reads: when a round is due, which stage may run, what a round trains on.

The stages in annotation/services/round_stages.py write; everything they read with a rule in it
(which judgements a round's reward and policy see, which prompts a round generates for, which
responses become candidates or blind evaluations) is here. What is particular to a feedback kind
comes from its loop hooks (`loop_hooks`), never from a test of the kind's name. A kind whose
prompts carry images and facts (hallucination) gets them here too: each training row with its
prompt's factual context, and its stored images opened for generation and training.
"""

from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from django.core.files.storage import storages

from ..errors import InvalidInput
from ..kinds import kind_for
from ..kinds.pairwise_loop import PairwiseLoop
from ..models import (
    Image,
    Judgement,
    ModelVersion,
    Project,
    Prompt,
    Response,
    Round,
    Split,
    Task,
    TaskResponse,
    TrainingRun,
)
from .export import Position, export_judgements
from .images import image_of_project, parse_ref

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage


def loop_hooks(kind_name: str) -> PairwiseLoop | None:
    """The loop hooks of a feedback kind, or None when the online loop does not serve it."""
    try:
        kind = kind_for(kind_name)
    except InvalidInput:  # a kind not registered (yet) has no loop either
        return None
    return kind.loop


def project_loop_hooks(project: Project) -> PairwiseLoop:
    """The project's loop hooks; InvalidInput (shown on the dashboard) when the loop cannot serve it."""
    hooks = loop_hooks(project.kind)
    if hooks is None:
        raise InvalidInput(
            f"the online loop does not serve {project.kind} projects",
            errors=[{"field": "enabled", "message": f"not available for {project.kind}"}],
        )
    return hooks


# --- triggers and order ---------------------------------------------------------------------------


def fresh_judgements(*, project: Project) -> int:
    """Human judgements not yet used by any round."""
    last = Round.objects.filter(project=project).exclude(data_cursor="").order_by("-number").first()
    judgements = Judgement.objects.filter(project=project)
    if last is not None:
        judgements = judgements.filter(Position.decode(last.data_cursor).after())
    return judgements.count()


def run_is_next(run: TrainingRun) -> bool:
    """Only the first unfinished stage of a round may run."""
    first_open = (
        run.round.runs.exclude(status=TrainingRun.Status.SUCCEEDED).order_by("position").first()
    )
    return first_open is not None and first_open.pk == run.pk


def previous_policy(project: Project, number: int) -> ModelVersion:
    """The newest policy registered before round `number` (π_0, the base, for round 1)."""
    return (
        ModelVersion.objects.filter(
            project=project, kind=ModelVersion.Kind.POLICY, round__lt=number
        )
        .order_by("-round")
        .first()
    )


# --- what the reward and policy stages train on -----------------------------------------------------


def human_pairs(
    project: Project, since: str | None = None, until: str | None = None
) -> tuple[list[Any], str, int]:
    """Decisive human judgements on training prompts (after `since`, up to `until`) as pairs, the export cursor, and the count."""
    hooks = project_loop_hooks(project)
    export = export_judgements(
        project=project,
        shape=hooks.training_shape,
        since=since or None,
        until=until or None,
        prompt_split=Split.TRAIN,
    )
    rows = list(export.rows())
    if hooks.reads_context:
        rows = _with_context(rows)
    return hooks.training_pairs(rows), export.cursor, len(rows)


def _with_context(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row with its prompt's factual context (captions, reference answer) as `context`.

    The export rows name their task, not the context; a fact-augmented reward model reads it
    beside the question (Fact-RLHF). One query for all rows.
    """
    contexts = dict(
        Task.objects.filter(pk__in={row["task_id"] for row in rows}).values_list(
            "pk", "prompt__context"
        )
    )
    return [{**row, "context": contexts.get(row["task_id"]) or {}} for row in rows]


def model_labelled_pairs(project: Project, round_number: int) -> list[Any]:
    """Pairs the reward ensemble labelled for a round's tasks, in the training shape's pairs."""
    hooks = project_loop_hooks(project)
    tasks = Task.objects.filter(
        project=project, round=round_number, auto_label__isnull=False
    ).select_related("prompt")
    slots: dict[int, list[str]] = {}
    for task_id, text in (
        TaskResponse.objects.filter(task__in=tasks)
        .order_by("task_id", "position")
        .values_list("task_id", "response__text")
    ):
        slots.setdefault(task_id, []).append(text)
    images = prompt_images([task.prompt for task in tasks])
    rows = [
        hooks.labelled_row(
            prompt=task.prompt.messages,
            texts=slots[task.pk],
            label=task.auto_label,
            image=images.get(task.prompt.image),
            context=task.prompt.context or {},
        )
        for task in tasks
    ]
    return hooks.training_pairs(rows)


def policy_pairs(project: Project, loop_round: Round) -> tuple[list[Any], str]:
    """The pairs round `loop_round`'s DPO trains on, and the export cursor they end at.

    Iterative DPO trains each round on the pairs the previous policy produced (the Online-RLHF
    recipe): the judgements made since the previous round took its data (with the corrections
    among them, for kinds that take corrections), and the pairs the ensemble labelled for that
    round. The reward ensemble, by contrast, learns from all of them.
    """
    earlier = Round.objects.filter(project=project, number=loop_round.number - 1).first()
    since = earlier.data_cursor if earlier is not None else None
    # Up to the cursor this round's reward stage took, not a fresh one: a judgement made between
    # the two stages then belongs to the next round's DPO only, instead of training it twice.
    until = Round.objects.values_list("data_cursor", flat=True).get(pk=loop_round.pk)
    pairs, cursor, _ = human_pairs(project, since=since, until=until)
    corrected = corrected_pairs(project, since=since, until=cursor)
    return pairs + corrected + model_labelled_pairs(project, loop_round.number - 1), cursor


def corrected_pairs(project: Project, *, since: str | None, until: str | None) -> list[Any]:
    """Annotators' corrections on training prompts (after `since`, up to `until`) as pairs, the
    corrected answer chosen over the original; [] for a kind whose hooks take none."""
    hooks = project_loop_hooks(project)
    if not hooks.correction_shape:
        return []
    export = export_judgements(
        project=project,
        shape=hooks.correction_shape,
        since=since or None,
        until=until or None,
        prompt_split=Split.TRAIN,
    )
    return hooks.correction_pairs(list(export.rows()))


# --- what the generate and select stages work on -----------------------------------------------------


def prompt_batch(project: Project, number: int, size: int) -> list[Prompt]:
    """Round r's training prompts: slice r of the project's train prompts, wrapping around.

    Slice 0 is what round-0 tasks were usually imported for, so round 1 generates for fresh prompts.
    """
    ids = list(
        Prompt.objects.filter(project=project, split=Split.TRAIN)
        .order_by("id")
        .values_list("id", flat=True)
    )
    if not ids:
        return []
    start = (number * size) % len(ids)
    chosen = [ids[(start + i) % len(ids)] for i in range(min(size, len(ids)))]
    by_id = Prompt.objects.in_bulk(chosen)
    return [by_id[i] for i in chosen]


def evaluation_prompts(project: Project, count: int) -> list[Prompt]:
    """The held-out prompts every round's blind evaluation asks about: the same ones each round."""
    return list(Prompt.objects.filter(project=project, split=Split.EVAL).order_by("id")[:count])


def round_candidates(*, policy: ModelVersion, prompt_ids: list[int]) -> dict[int, list[Response]]:
    """π_r's samples for the round's training prompts, by prompt, in the order they were stored.

    An empty sample is no answer to compare (and no training row): it never reaches a task.
    """
    responses: dict[int, list[Response]] = {}
    for response in Response.objects.filter(
        model_version=policy, prompt_id__in=prompt_ids
    ).order_by("id"):
        if response.text.strip():
            responses.setdefault(response.prompt_id, []).append(response)
    return responses


def evaluation_pairs(
    *, policy: ModelVersion, previous: ModelVersion, train_prompt_ids: list[int]
) -> list[tuple[Response, Response]]:
    """(π_r's answer, π_{r-1}'s answer) on each held-out prompt both answered, π_r's with its prompt."""
    new_side = {
        r.prompt_id: r
        for r in Response.objects.filter(model_version=policy)
        .exclude(prompt_id__in=train_prompt_ids)
        .select_related("prompt")
    }
    old_side = {
        r.prompt_id: r
        for r in Response.objects.filter(model_version=previous, prompt_id__in=new_side)
    }
    return [(r, old_side[pid]) for pid, r in new_side.items() if pid in old_side]


# --- images of multimodal prompts ---------------------------------------------------------------


def prompt_images(prompts: list[Prompt]) -> dict[str, dict[str, str]]:
    """{prompt.image ref: {"sha256", "format"}} for the prompts that have an image (one query):
    what an export row names an image by (`images/<sha256>.<ext>`)."""
    shas = {sha for p in prompts if (sha := parse_ref(p.image)) is not None}
    return {
        f"sha256:{sha}": {"sha256": sha, "format": fmt}
        for sha, fmt in Image.objects.filter(pk__in=shas).values_list("sha256", "format")
    }


IMAGE_CACHE = 256  # decoded images a loader keeps: a round's batch of prompts, not a whole project


def image_loader(project: Project) -> Callable[[str], "PILImage"]:
    """Opens the project's stored images as RGB PIL images, by a prompt's reference
    ("sha256:<hex>") or an export row's path ("images/<sha256>.<ext>").

    Only images linked to the project open (`image_of_project`: NotFound otherwise), so a row or
    a prompt can never make the loop read another project's image or any other file: the name
    given is parsed for its hash and the file is the one storage holds for it. The images were
    verified when stored (pixel and size caps), so decoding them here is safe.
    """
    from PIL import Image as Pil

    @lru_cache(maxsize=IMAGE_CACHE)
    def load(ref: str) -> "PILImage":
        image = image_of_project(project=project, ref=_image_ref(ref))
        with storages["default"].open(image.file, "rb") as handle:
            opened = Pil.open(handle)
            opened.load()
        return opened.convert("RGB")

    return load


def _image_ref(name: str) -> str:
    """ "sha256:<hex>" of a prompt reference or of an exported path; "" (which names no image)
    for anything else."""
    if name.startswith("images/"):
        stem = name.removeprefix("images/").partition(".")[0]
        return f"sha256:{stem}" if parse_ref(f"sha256:{stem}") else ""
    return name if parse_ref(name) else ""
