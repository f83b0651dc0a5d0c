"""The four stages of a round, in the order they run (DESIGN.md "The online loop").

    reward    fit the reward ensemble on every human judgement so far, evaluate it on held-out ones
    policy    train π_r by DPO from π_{r-1} against the fixed reference π_0, register the ModelVersion
    generate  sample K responses per prompt from π_r for the next prompt batch, and one response each
              from π_r and π_{r-1} on held-out prompts
    select    score the candidates with the ensemble, send pairs to humans by priority (ensemble
              disagreement first), let the ensemble label the rest, and create blind evaluation tasks

Each body runs inside one attempt (round_attempts): every write sits in a transaction that starts
with `run_fence`. Reads go through annotation/selectors/round_data.py; what depends on the project's
feedback kind comes from the kind's loop hooks (annotation/kinds/pairwise_loop.py): the export
shape trained on, which trainer fits the reward model (a text ensemble, Fact-RLHF for images
with facts, or a reward model that sees the image) and the policy (DPO, or vision DPO), which
generator answers a prompt (text, or with its image), how the reward model scores the candidates,
and how a selected pair becomes a task. `training` is imported inside the bodies and hooks: it
costs torch, which the web process never needs.
"""

import random
from collections.abc import Callable
from typing import Any

from django.db import transaction

from ..errors import TandemError
from ..loop import LoopSettings
from ..models import ModelVersion, Project, Prompt, Response, Round, Task, TaskResponse, TrainingRun
from ..selectors.round_data import (
    evaluation_pairs,
    evaluation_prompts,
    human_pairs,
    policy_pairs,
    previous_policy,
    project_loop_hooks,
    prompt_batch,
    round_candidates,
)
from .outcomes import outcomes_simulate_now
from .round_attempts import StageError, artifact_root, publish_once, run_fence, version_register

STAGES = ("reward", "policy", "generate", "select")
EVALUATION_PRIORITY = (
    1e6  # evaluation tasks are few and carry the round's headline number: ask first
)
# Sides and creation order of blind evaluations: unseeded and not replayable from anything an
# annotator can see (a seed from the project and round numbers could be replayed).
_BLIND = random.SystemRandom()

Progress = Callable[[Any], None]


class _Step:
    """A progress report of a stage that is not a training loop (see round_attempts.progress_reporter)."""

    def __init__(self, step: int, total: int):
        self.step, self.total, self.loss = step, total, None


def storable_text(text: str) -> str:
    """Generated text as Postgres can store it: a small model may emit the NUL byte, which text refuses."""
    return text.replace("\x00", "\ufffd")


def stage_reward(run: TrainingRun, loop: LoopSettings, progress: Progress) -> None:
    from training.artifacts import read_manifest

    loop_round, project = run.round, run.round.project
    hooks = project_loop_hooks(project)
    if loop.reward_model not in hooks.reward_models:
        raise StageError(
            f"{project.kind} projects offer the reward models {', '.join(hooks.reward_models)}, "
            f"not {loop.reward_model}"
        )
    pairs, cursor, count = human_pairs(project)
    train, held_out = hooks.reward_split(pairs, seed=project.pk)
    if len(train) < 4 or not held_out:
        raise StageError(
            f"the reward ensemble needs more decisive human judgements: {count} so far "
            "(ties and both-bad answers do not count)"
        )
    name = f"round-{loop_round.number}-reward"
    path, metrics = publish_once(
        run,
        artifact_root(project),
        name,
        lambda scratch: hooks.train_reward(
            train,
            held_out,
            loop=loop,
            project=project,
            root=scratch,
            name=name,
            progress=progress,
            data_cursor=cursor,
        ),
    )
    trained_to = read_manifest(path).data_cursor
    if trained_to and trained_to != cursor:
        # An attempt that died after publishing trained this model: the round records the data
        # that model saw, not the judgements that arrived since (they belong to the next round).
        cursor, count = trained_to, human_pairs(project, until=trained_to)[2]
    with transaction.atomic():
        run_fence(run)
        version = version_register(run, ModelVersion.Kind.REWARD, name, path, metrics, parent=None)
        accuracy = (metrics.get("eval") or {}).get("accuracy")
        Round.objects.filter(pk=loop_round.pk).update(
            reward_version=version, reward_accuracy=accuracy, data_cursor=cursor, judgements=count
        )


def stage_policy(run: TrainingRun, loop: LoopSettings, progress: Progress) -> None:
    from training.policy import DPOConfig

    loop_round, project = run.round, run.round.project
    hooks = project_loop_hooks(project)
    pairs, cursor = policy_pairs(project, loop_round)
    if not pairs:
        raise StageError(
            f"no new decisive human judgements since round {loop_round.number - 1} to train the policy on"
        )
    previous = previous_policy(project, loop_round.number)
    base = previous_policy(project, 1)
    config = DPOConfig(**{"loss": "ipo" if loop.algorithm == "ipo" else "sigmoid", **loop.policy})
    name = f"round-{loop_round.number}-policy"
    path, metrics = publish_once(
        run,
        artifact_root(project),
        name,
        lambda scratch: hooks.train_policy(
            pairs,
            config,
            project=project,
            policy_ref=previous.artifact_path,
            reference_ref=base.artifact_path,
            root=scratch,
            name=name,
            progress=progress,
            data_cursor=cursor,
            parent=previous.name,
        ),
    )
    with transaction.atomic():
        run_fence(run)
        version = version_register(
            run, ModelVersion.Kind.POLICY, name, path, metrics, parent=previous
        )
        Round.objects.filter(pk=loop_round.pk).update(policy_version=version)


def stage_generate(run: TrainingRun, loop: LoopSettings, progress: Progress) -> None:
    from training.generation import GenerationConfig

    loop_round, project = run.round, run.round.project
    hooks = project_loop_hooks(project)
    policy = loop_round.policy_version or ModelVersion.objects.get(
        project=project, kind="policy", round=loop_round.number
    )
    previous = previous_policy(project, loop_round.number)
    if Response.objects.filter(model_version=policy).exists():
        return  # an earlier attempt got this far; the responses are already stored
    prompts = prompt_batch(project, loop_round.number, loop.prompts_per_round)
    if not prompts:
        raise StageError("the project has no training prompts to generate for")
    evaluation = evaluation_prompts(project, loop.eval_prompts)
    config = GenerationConfig(
        **{"k": loop.samples_per_prompt, "seed": loop_round.number, **loop.generation}
    )
    current = hooks.generator(policy.artifact_path, project=project)
    progress_total = len(prompts) + 2 * len(evaluation)
    samples = current.generate(prompts, config)
    progress(_Step(len(prompts), progress_total))
    single = GenerationConfig(**{**config.__dict__, "k": 1})
    new_side = current.generate(evaluation, single) if evaluation else []
    del current
    old_side = (
        hooks.generator(previous.artifact_path, project=project).generate(evaluation, single)
        if evaluation
        else []
    )
    progress(_Step(progress_total, progress_total))
    held_out = [
        Response(
            prompt=p, text=storable_text(texts[0]), model_name=version.name, model_version=version
        )
        for version, side in ((policy, new_side), (previous, old_side))
        for p, texts in zip(evaluation, side, strict=True)
    ]
    # Blind evaluation: ids and creation times follow this order, so it must say nothing about
    # which model wrote which response, within a task or across tasks.
    _BLIND.shuffle(held_out)
    with transaction.atomic():
        run_fence(run)
        if Response.objects.filter(model_version=policy).exists():
            return
        Response.objects.bulk_create(
            Response(
                prompt=p, text=storable_text(text), model_name=policy.name, model_version=policy
            )
            for p, texts in zip(prompts, samples, strict=True)
            for text in texts
        )
        Response.objects.bulk_create(held_out)
        TrainingRun.objects.filter(pk=run.pk).update(
            metrics={
                "prompts": len(prompts),
                "samples": sum(len(s) for s in samples),
                "evaluation_prompts": len(evaluation),
            }
        )


def stage_select(run: TrainingRun, loop: LoopSettings, progress: Progress) -> None:
    import numpy as np

    from training.reward import EnsembleScores
    from training.selection import select_pairs

    loop_round, project = run.round, run.round.project
    hooks = project_loop_hooks(project)
    if Task.objects.filter(project=project, round=loop_round.number).exists():
        return  # tasks were created by an earlier attempt, in the same transaction as each other
    policy = ModelVersion.objects.get(project=project, kind="policy", round=loop_round.number)
    previous = previous_policy(project, loop_round.number)
    train_prompt_ids = [
        p.pk for p in prompt_batch(project, loop_round.number, loop.prompts_per_round)
    ]
    responses = round_candidates(policy=policy, prompt_ids=train_prompt_ids)
    prompt_ids = [pid for pid in train_prompt_ids if len(responses.get(pid, [])) >= 2]
    prompts = Prompt.objects.in_bulk(prompt_ids)
    candidates = [[r.text for r in responses[pid]] for pid in prompt_ids]

    scores = hooks.candidate_rewards(
        loop_round.reward_version.artifact_path,
        [prompts[pid] for pid in prompt_ids],
        candidates,
        project=project,
    )
    # One [members, k_p] block per prompt: k_p varies once empty samples are left out.
    bounds = np.cumsum([0] + [len(texts) for texts in candidates])
    per_prompt = [
        EnsembleScores(members=scores[:, a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    selected = select_pairs(candidates, per_prompt, strategy=loop.selection, seed=loop_round.number)
    humans = round(len(selected) * loop.human_share)
    if hooks.simulates_outcomes:
        # Before any task exists: an annotator must never reach the hindsight phase of a loop
        # task whose outcome is still missing. Outside the fence's transaction: it is slow, and
        # the outcomes it writes are right whichever attempt wrote them.
        try:
            outcomes_simulate_now(project=project)
        except TandemError as exc:
            raise StageError(str(exc)) from None
    progress(_Step(1, 2))

    with transaction.atomic():
        run_fence(run)
        if Task.objects.filter(project=project, round=loop_round.number).exists():
            return
        for index, pick in enumerate(selected):
            pid = prompt_ids[pick.prompt_index]
            first, second = responses[pid][pick.first], responses[pid][pick.second]
            auto_label = None
            if index >= humans:
                mean = per_prompt[pick.prompt_index].members.mean(axis=0)
                shown, auto_label = hooks.labelled_task(
                    first,
                    second,
                    rewards=(mean[pick.first], mean[pick.second]),
                    reward_version=loop_round.reward_version_id,
                )
            else:
                shown = hooks.shown_order([first, second], rng=_BLIND)
            task_create(
                project,
                prompts[pid],
                shown,
                round_number=loop_round.number,
                priority=pick.priority,
                auto_label=auto_label,
            )
        blind = evaluation_pairs(
            policy=policy, previous=previous, train_prompt_ids=train_prompt_ids
        )
        # Blind: which side holds the new policy is the hooks' (at random, from a source no one
        # can replay), and the tasks come in random order too.
        _BLIND.shuffle(blind)
        for response, old in blind:
            task_create(
                project,
                response.prompt,
                hooks.shown_order([response, old], rng=_BLIND),
                round_number=loop_round.number,
                priority=EVALUATION_PRIORITY,
                purpose="evaluation",
            )
        TrainingRun.objects.filter(pk=run.pk).update(
            metrics={
                "human_tasks": humans,
                "model_labelled": len(selected) - humans,
                "evaluation_tasks": len(blind),
                "mean_priority": float(np.mean([p.priority for p in selected]))
                if selected
                else 0.0,
            }
        )


def task_create(
    project: Project,
    prompt: Prompt,
    shown: list[Response],
    *,
    round_number: int,
    priority: float,
    auto_label: dict | None = None,
    purpose: str = "label",
) -> Task:
    """A task of the loop showing `shown` in slot order; the caller holds the fence."""
    task = Task.objects.create(
        project=project,
        prompt=prompt,
        kind=project.kind,
        round=round_number,
        priority=priority,
        overlap=project.overlap,
        purpose=purpose,
        auto_label=auto_label,
        is_complete=auto_label is not None,
    )
    TaskResponse.objects.bulk_create(
        TaskResponse(task=task, response=r, position=i) for i, r in enumerate(shown)
    )
    return task


STAGE_BODIES: dict[str, Callable[[TrainingRun, LoopSettings, Progress], None]] = {
    "reward": stage_reward,
    "policy": stage_policy,
    "generate": stage_generate,
    "select": stage_select,
}
