"""Oracle-driven projects and annotators: for demos, `simulate_annotators`, load and end-to-end tests.

An oracle stands in for the humans. On a pairwise loop project (training.oracles) it supplies the
prompts, π_0 (a tiny CPU model after a supervised warm start) and the preference simulated
annotators follow. Each kind that can be simulated names its oracle annotator in
its `Kind.oracle_annotator`; `oracle_annotator` builds the one of a project's kind, so neither this module
nor the command tests a kind by name.
"""

import io
import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.utils.module_loading import import_string

from ..errors import InvalidInput, TandemError
from ..kinds import kind_for, registered
from ..loop import model_reference_check
from ..models import FeedbackKind, ImportJob, Project, TaskResponse
from .assignment import assignment_lease
from .imports import import_create
from .judgement import judgement_submit
from .projects import project_create
from .rounds import loop_configure, storable_text

# Sizes from bench/oracle_loop.py, where they make the tiny policy learn within minutes on CPU.
TINY_LOOP: dict[str, Any] = {
    "algorithm": "dpo",
    "samples_per_prompt": 4,
    "human_share": 1.0,
    "selection": "disagreement",
    "queue": "cpu",
    "ensemble_members": 3,
    "reward": {
        "epochs": 8.0,
        "learning_rate": 3e-3,
        "batch_size": 16,
        "max_length": 64,
        "logging_steps": 10,
    },
    "policy": {
        "learning_rate": 2e-3,
        "epochs": 3.0,
        "batch_size": 16,
        "max_length": 64,
        "beta": 0.1,
    },
    "generation": {"max_new_tokens": 14, "temperature": 1.0},
}


def oracle_project_setup(
    *,
    creator: AbstractUser,
    oracle_name: str = "warm-words",
    name: str | None = None,
    base_policy: Path | None = None,
    warm_start_steps: int = 250,
    prompts_per_round: int = 48,
    eval_prompts: int = 16,
    trigger_judgements: int = 0,
    selection: str | None = None,
    seed: int = 0,
) -> Project:
    """A pairwise loop project on the oracle's task: π_0 samples two answers for the first batch
    of training prompts (the round-0 tasks); the other prompts wait for later rounds, and the
    held-out ones for the human evaluation of each round's policy."""
    from training.generation import GenerationConfig, TransformersGenerator
    from training.oracles import oracle_named

    oracle = oracle_named(oracle_name)
    if base_policy is not None:
        # A given π0 must be a reference the loop accepts (a model root, see LoopSettings): check it
        # before anything is created, instead of after a project and its round-0 tasks exist.
        base_policy = Path(model_reference_check("policy_model", str(base_policy)))
    project = project_create(
        creator=creator,
        name=name or f"Oracle loop ({oracle.name})",
        kind=FeedbackKind.PAIRWISE,
        overlap=1,
        lease_seconds=300,
        instructions=f"Simulated annotators follow the hidden **{oracle.name}** oracle.",
    )
    prompts = oracle.prompts()
    random.Random(seed).shuffle(prompts)
    evaluation, train = prompts[:eval_prompts], prompts[eval_prompts:]
    if base_policy is None:
        # Warm-started on the training prompts only, so the held-out ones stay unseen (as in the
        # package's oracle benchmark).
        base_policy = oracle.warm_start(
            Path(settings.TANDEM_ARTIFACT_ROOT) / f"project-{project.pk}" / "pi0",
            steps=warm_start_steps,
            seed=seed,
            prompts=train,
        )
    first = train[:prompts_per_round]
    samples = TransformersGenerator(base_policy, device="cpu").generate(
        first, GenerationConfig(k=2, seed=seed, **TINY_LOOP["generation"])
    )
    # A sample π0 left empty is no answer to compare: that prompt waits for a later round instead.
    lines = [
        {
            "prompt": p,
            "responses": [{"text": storable_text(t), "model": "π0"} for t in s]
            if all(t.strip() for t in s)
            else [],
        }
        for p, s in zip(first, samples, strict=True)
    ]

    lines += [{"prompt": p, "responses": []} for p in train[prompts_per_round:]]
    lines += [{"prompt": p, "responses": [], "split": "eval"} for p in evaluation]
    body = "".join(json.dumps(line) + "\n" for line in lines).encode()
    job = import_create(
        project=project,
        user=creator,
        stream=io.BytesIO(body),
        size=len(body),
        filename="oracle.jsonl",
    )
    if job.status != ImportJob.Status.DONE:
        raise TandemError(f"the oracle's prompts did not import: {job.errors[:3]}")
    loop_configure(
        project=project,
        data={
            **TINY_LOOP,
            "enabled": True,
            "policy_model": str(base_policy),
            "reward_backbone": str(base_policy),
            "prompts_per_round": prompts_per_round,
            "eval_prompts": eval_prompts,
            "trigger_judgements": trigger_judgements,
            "selection": selection or TINY_LOOP["selection"],
        },
    )
    return project


class OracleAnnotator(Protocol):
    """A simulated annotator of one project; the command's threads share it, so it keeps no
    per-annotator state."""

    def answer(self, task: Mapping[str, Any]) -> dict[str, Any]:
        """The judgement payload for a leased task: the REST lease's "task" ({"id", "kind",
        "responses": [{"id", "text"}, ...], ...}); `oracle_label_queue` passes the same keys."""
        ...

    def report(self) -> list[str]:
        """Text lines that sum up the project's judgements, printed once the queue is dry."""
        ...


def oracle_annotator(
    *, project: Project, options: Mapping[str, Any] | None = None
) -> OracleAnnotator:
    """The oracle annotator of the project's kind; InvalidInput when the kind has none."""
    path = kind_for(project.kind).oracle_annotator
    if not path:
        simulated = sorted(kind.name for kind in registered() if kind.oracle_annotator)
        raise InvalidInput(
            f"no simulated annotator judges {project.kind} projects; "
            f"kinds that have one: {', '.join(simulated)}",
            errors=[{"field": "kind", "message": "cannot be simulated"}],
        )
    return import_string(path)(project=project, options=options or {})


class PreferenceOracle:
    """Pairwise: prefers what a hidden `training.oracles` oracle (option "oracle") prefers."""

    def __init__(self, *, project: Project, options: Mapping[str, Any]):
        from training.oracles import oracle_named

        try:
            self.oracle = oracle_named(options.get("oracle") or "warm-words")
        except ValueError as exc:
            raise InvalidInput(
                str(exc), errors=[{"field": "oracle", "message": str(exc)}]
            ) from None

    def answer(self, task: Mapping[str, Any]) -> dict[str, Any]:
        a, b = (response["text"] for response in task["responses"])
        return oracle_answer(self.oracle.name, a, b)

    def report(self) -> list[str]:
        return []  # the loop's round table says what there is to say


def oracle_answer(oracle_name: str, a: str, b: str) -> dict[str, Any]:
    """The judgement payload an annotator following the oracle gives for responses A and B."""
    from training.oracles import oracle_named

    choice = oracle_named(oracle_name).prefer(a, b)
    return {"choice": choice, "strength": 2} if choice != "tie" else {"choice": "tie"}


def oracle_label_queue(
    *,
    project: Project,
    annotator: AbstractUser,
    oracle_name: str = "warm-words",
    options: Mapping[str, Any] | None = None,
) -> int:
    """The annotator works the queue dry following the project kind's oracle (in-process, with
    `options` as the command's, `oracle_name` for pairwise); returns the judgements given."""
    oracle = oracle_annotator(project=project, options={"oracle": oracle_name, **(options or {})})
    given = 0
    while (lease := assignment_lease(annotator=annotator, project=project)) is not None:
        texts = (
            TaskResponse.objects.filter(task_id=lease.task_id)
            .order_by("position")
            .values_list("response__text", flat=True)
        )
        task = {
            "id": lease.task_id,
            "kind": project.kind,
            "responses": [{"text": text} for text in texts],
        }
        judgement_submit(
            assignment=lease,
            data=oracle.answer(task),
            idempotency_key=f"oracle-{lease.pk}",
        )
        given += 1
    return given
