"""A hallucination loop project on a world of drawn scenes, for `simulate_annotators` and the web
loop's benchmark (bench/web_hallucination_loop.py).

Everything true is known (`training.scenes`): each prompt is a drawn picture of coloured shapes and
one question about it, its factual context the scene's captions and its metadata the scene itself,
which the scene oracle (annotation/kinds/hallucination/simulation.py) reads to judge answers as a
careful person would. The project is built through the same doors a manager's data goes through:
the images through the image service, the prompts and π_0's round-0 answers through the import
service, the loop through `loop_configure`.

π_0 is given (a vision-language model inside a model root, TANDEM_MODEL_ROOTS): warm-starting one
is the benchmark's business (bench/hallucination_world.py's recipe), not the web app's.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from django.contrib.auth.models import AbstractUser
from django.db import transaction

from training import scenes

from ..errors import InvalidInput, TandemError
from ..loop import model_reference_check
from ..models import FeedbackKind, ImportJob, Project
from .images import ImageBatch, image_store
from .imports import import_create
from .projects import project_create
from .rounds import loop_configure, storable_text

# The package benchmark's recipe (bench/hallucination_loop.py's Settings), as loop settings: the
# Fact-RLHF reward on MiniLM (one model, as the package fits one; the blind baseline is trained
# beside it by the loop), vision DPO with β 0.12 from π_{r-1} against π_0 (the image encoder
# frozen), K=4 answers of up to 48 tokens. Pairs are the reward model's best against its worst answer of each prompt.
SCENE_LOOP: dict[str, Any] = {
    "algorithm": "dpo",
    "samples_per_prompt": 4,
    "human_share": 1.0,
    "selection": "best_vs_worst",
    "queue": "cpu",
    "ensemble_members": 1,
    "reward_backbone": "minilm",
    "reward": {
        "epochs": 2.0,
        "learning_rate": 1e-4,
        "batch_size": 16,
        "max_length": 128,
        "warmup": 0.05,
    },
    "policy": {
        "beta": 0.12,
        "learning_rate": 5e-4,
        "epochs": 1.0,
        "batch_size": 8,
        "warmup_ratio": 0.0,
        "max_length": 160,
    },
    "generation": {"max_new_tokens": 48, "temperature": 1.0},
}
# Question categories asked (None: the plain "what is in the picture" question), as the package
# benchmark asks them: a tiny tower at 64 px can see presence, count, colour and relation.
ASKED = (None, "object", "count", "attribute", "relation")

INSTRUCTIONS = """\
Simulated annotators (the scene oracle) judge this project: for each picture of shapes they mark
every false sentence of both answers with its category and choose the answer with fewer.
"""


class SceneQuestion(Protocol):
    """One prompt of the world: a name, a scene and a question about it (bench/hallucination_world's
    `Prompt` is one)."""

    key: str
    scene: scenes.Scene
    question: scenes.Question


@dataclass(frozen=True)
class ScenePrompt:
    key: str
    scene: scenes.Scene
    question: scenes.Question


def scene_prompts(rng: random.Random, n: int, prefix: str) -> list[ScenePrompt]:
    """`n` prompts on fresh scenes of two large shapes of different kinds, each with one question
    drawn among the ASKED categories: the package benchmark's world (same draws for the same rng)."""
    out = []
    for i in range(n):
        drawn = scenes.random_scene(rng, min_items=2, max_items=2)
        scene = scenes.Scene(items=tuple(replace(item, size="large") for item in drawn.items))
        asked = [q for q in scenes.questions(scene) if q.category in ASKED]
        out.append(ScenePrompt(f"{prefix}{i}", scene, rng.choice(asked)))
    return out


def _round_zero_answers(
    policy: Path,
    prompts: Sequence[SceneQuestion],
    *,
    image_size: int,
    max_new_tokens: int,
    seed: int,
) -> list[list[str]]:
    """Two answers of π_0 per prompt, each generated seeing the prompt's picture."""
    from training.generation import GenerationConfig
    from training.vision_generation import VisionPrompt, make_vision_generator

    generator = make_vision_generator("transformers", policy, device="cpu")
    return generator.generate(
        [
            VisionPrompt(
                messages=[{"role": "user", "content": p.question.text}],
                images=[scenes.draw(p.scene, image_size)],
            )
            for p in prompts
        ],
        GenerationConfig(k=2, temperature=1.0, max_new_tokens=max_new_tokens, seed=seed),
    )


def _line(prompt: SceneQuestion, *, split: str, answers: Sequence[str] = ()) -> dict[str, Any]:
    return {
        "id": prompt.key,
        "prompt": prompt.question.text,
        # A prompt where π_0 left an answer empty has nothing to compare: it waits, unasked.
        "responses": [{"text": storable_text(t), "model": "π0"} for t in answers]
        if answers and all(t.strip() for t in answers)
        else [],
        "context": {"captions": scenes.captions(prompt.scene)},
        "metadata": {"topic": "shapes", "scene": prompt.scene.to_dict()},
        "split": split,
    }


def scene_project_setup(
    *,
    creator: AbstractUser,
    policy: Path,
    train: Sequence[SceneQuestion],
    evaluation: Sequence[SceneQuestion],
    prompts_per_round: int,
    name: str = "Shapes loop",
    image_size: int = 64,
    trigger_judgements: int = 0,
    loop: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> Project:
    """A hallucination project with its online loop on, over drawn scenes; returns it.

    `train` prompts in order (round r generates for slice r, `prompts_per_round` long; π_0 answers
    slice 0 twice for the round-0 tasks), `evaluation` the held-out ones every round's blind
    evaluation asks about. `policy` is π_0, a vision-language model inside a model root; `loop`
    overrides SCENE_LOOP's settings (its nested "reward", "policy", "generation" replace the
    defaults' key by key). Checked before anything is created: a policy outside the model roots,
    no training prompt, or duplicate prompt keys raise InvalidInput.
    Precondition: no transaction is open (images are kept only once the rows naming them commit).
    """
    settings = _settings(loop)
    policy = Path(model_reference_check("policy_model", str(policy)))
    model_reference_check("reward_backbone", settings["reward_backbone"])
    if not train or prompts_per_round < 1:
        raise InvalidInput(
            "a scene project needs training prompts and prompts_per_round >= 1",
            errors=[{"field": "train", "message": "required"}],
        )
    keys = [p.key for p in (*train, *evaluation)]
    if len(set(keys)) != len(keys):
        raise InvalidInput(
            "prompt keys must be unique", errors=[{"field": "key", "message": "duplicate"}]
        )
    first = list(train[:prompts_per_round])
    answers = _round_zero_answers(
        policy,
        first,
        image_size=image_size,
        max_new_tokens=settings["generation"]["max_new_tokens"],
        seed=seed,
    )
    project = project_create(
        creator=creator,
        name=name,
        kind=FeedbackKind.HALLUCINATION,
        overlap=1,
        lease_seconds=300,
        instructions=INSTRUCTIONS,
    )
    lines = [_line(p, split="train", answers=a) for p, a in zip(first, answers, strict=True)]
    lines += [_line(p, split="train") for p in train[prompts_per_round:]]
    lines += [_line(p, split="eval") for p in evaluation]
    with ImageBatch(project=project) as batch:
        for line, prompt in zip(lines, [*train, *evaluation], strict=True):
            png = scenes.png_bytes(prompt.scene, image_size)
            image = image_store(project=project, data=png, name=f"{prompt.key}.png", batch=batch)
            line["image"] = f"sha256:{image.sha256}"
        body = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()
        with transaction.atomic():
            batch.write_rows()
            job = import_create(
                project=project,
                user=creator,
                stream=io.BytesIO(body),
                size=len(body),
                filename="scenes.jsonl",
            )
            if job.status != ImportJob.Status.DONE:
                # Rolls the image rows back too: nothing of a failed setup is kept but the project.
                raise TandemError(f"the scenes did not import: {job.errors[:3]}")
    loop_configure(
        project=project,
        data={
            **settings,
            "enabled": True,
            "policy_model": str(policy),
            "prompts_per_round": prompts_per_round,
            "eval_prompts": len(evaluation),
            "trigger_judgements": trigger_judgements,
        },
    )
    return project


def _settings(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """SCENE_LOOP with `overrides`: a nested group is merged key by key, anything else replaced."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in SCENE_LOOP.items()}
    for key, value in (overrides or {}).items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key].update(value)
        else:
            out[key] = value
    return out
