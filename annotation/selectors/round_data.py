"""The online loop's data reads: when a round is due, which stage may run, what a round trains on.

The stages in annotation/services/round_stages.py write; everything they read with a rule in it
(which judgements a round's reward and policy see, which prompts a round generates for, which
responses become candidates or blind evaluations) is here. What is particular to a feedback kind
comes from its loop hooks (`loop_hooks`), never from a test of the kind's name.
"""

from typing import Any

from ..errors import InvalidInput
from ..kinds import kind_for
from ..kinds.pairwise_loop import PairwiseLoop
from ..models import (
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
    return hooks.training_pairs(rows), export.cursor, len(rows)


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
    rows = [
        hooks.labelled_row(prompt=task.prompt.messages, texts=slots[task.pk], label=task.auto_label)
        for task in tasks
    ]
    return hooks.training_pairs(rows)


def policy_pairs(project: Project, loop_round: Round) -> tuple[list[Any], str]:
    """The pairs round `loop_round`'s DPO trains on, and the export cursor they end at.

    Iterative DPO trains each round on the pairs the previous policy produced (the Online-RLHF
    recipe): the judgements made since the previous round took its data, and the pairs the
    ensemble labelled for that round. The reward ensemble, by contrast, learns from all of them.
    """
    earlier = Round.objects.filter(project=project, number=loop_round.number - 1).first()
    since = earlier.data_cursor if earlier is not None else None
    # Up to the cursor this round's reward stage took, not a fresh one: a judgement made between
    # the two stages then belongs to the next round's DPO only, instead of training it twice.
    until = Round.objects.values_list("data_cursor", flat=True).get(pk=loop_round.pk)
    pairs, cursor, _ = human_pairs(project, since=since, until=until)
    return pairs + model_labelled_pairs(project, round_number=loop_round.number - 1), cursor


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
