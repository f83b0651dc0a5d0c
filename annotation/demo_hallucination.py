"""The demo's hallucination project: pictures of coloured shapes, a question about each, and two
answers that really hallucinate about them.

Everything is drawn here by `training.scenes` (Pillow; nothing is downloaded), so every answer's
made-up claims are known: "llava-sim-a" usually says one false thing or none, "llava-sim-b" usually
more, and on some tasks the other way round, so the project page has two sources to compare and
annotators cannot learn a side. The images go through the image service like an upload, the tasks
through the import service like a JSONL file naming them by "sha256:<hex>": the demo exercises the
same doors a manager's data does.

Each prompt's metadata keeps its scene and the true answer key (every claim's span, category and
truth, per model), for simulated annotators and gold checks; annotators never see metadata.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Sequence
from typing import Any

from django.contrib.auth.models import AbstractUser
from django.db import transaction

from training import scenes

from . import services
from .models import FeedbackKind, ImportJob, Project, Role
from .services.images import ImageBatch, image_store

PROJECT_NAME = "Shapes: spot the hallucination"
TASKS = 30
SEED = 11  # a fixed world: every install draws the same pictures and answers
IMAGE_SIZE = 256
# (model, how many false claims it makes, drawn per task, and in which categories). sim-a slips on
# details, sim-b also invents objects and misplaces them: their category rates differ on the page.
MODELS = (
    ("llava-sim-a", (0, 0, 1, 1, 1, 2), ("attribute", "count", "comparison")),
    ("llava-sim-b", (1, 2, 2, 3), ("object", "relation", "count", "attribute")),
)

INSTRUCTIONS = """\
## Which answer hallucinates less?

You see a picture of coloured shapes, a question about it and two answers, A and B.
Some sentences of the answers are not true of the picture: a shape that is not there, a wrong
colour or size, a wrong count, a wrong position ("to the left of", "above") or a wrong comparison.

1. **Choose** the answer with fewer hallucinations (`1` A, `2` B, `3` tie). After a tie, say which
   is more helpful (`q` A, `w` B, `e` as helpful).
2. **Mark** every false sentence with its category: select it with the mouse and press the
   category's key, or move the cursor sentence by sentence (`j` / `k`, `[` / `]` to switch answer)
   and press the key. The captions under the picture are true: use them when the picture is small.
3. Optionally **correct** an answer (`c`): your edited copy trains the model on what it should have
   said.

Zoom the picture with `+` / `-` (`0` fits it) and pan with the arrow keys. Press `?` for every
shortcut.
"""


def _answer_key(response: scenes.Response) -> list[list[Any]]:
    return [[c.start, c.end, c.category, c.true] for c in response.claims]


def demo_tasks(*, seed: int = SEED, tasks: int = TASKS, size: int = IMAGE_SIZE) -> list[dict]:
    """The demo's tasks: each {"png": bytes, "line": an import line without its "image"}.

    Deterministic for a seed. The two answers never make as many false claims as each other, so
    "which hallucinates less" always has a right answer, and their order is drawn per task.
    """
    rng = random.Random(seed)
    out = []
    for number in range(tasks):
        scene = scenes.random_scene(rng, min_items=3, max_items=6)
        question = rng.choice(scenes.questions(scene))
        while True:
            counts = [rng.choice(n_false) for _, n_false, _ in MODELS]
            if counts[0] != counts[1]:
                break
        answers = []
        for (model, _, categories), n_false in zip(MODELS, counts, strict=True):
            response = scenes.respond(
                scene, question, rng, n_true=rng.randint(2, 3), n_false=n_false,
                categories=categories,
            )  # fmt: skip
            answers.append((model, response))
        rng.shuffle(answers)
        line = {
            "id": f"shapes-{number + 1:03d}",
            "prompt": question.text,
            "responses": [{"text": r.text, "model": model} for model, r in answers],
            "context": {"captions": scenes.captions(scene)},
            "metadata": {
                "topic": "shapes",
                "scene": scene.to_dict(),
                "answer_key": {model: _answer_key(r) for model, r in answers},
            },
        }
        out.append({"png": scenes.png_bytes(scene, size), "line": line})
    return out


def _members(project: Project, annotators: Sequence[str]) -> None:
    for username in annotators:
        if not project.memberships.filter(user__username=username, role=Role.ANNOTATOR).exists():
            services.membership_set(project=project, username=username, role=Role.ANNOTATOR)


def seed_hallucination_project(
    *, creator: AbstractUser, annotators: Sequence[str]
) -> tuple[Project, int]:
    """Finds or creates the demo's hallucination project and its tasks; returns (project, tasks
    created now). A second run finds everything and writes nothing.

    Preconditions: the creator and annotators exist; no transaction is open (the images' files
    are kept only once the rows naming them commit: see `ImageBatch`).
    """
    with transaction.atomic():
        project = Project.objects.filter(name=PROJECT_NAME).order_by("id").first()
        if project is None:
            project = services.project_create(
                creator=creator,
                name=PROJECT_NAME,
                kind=FeedbackKind.HALLUCINATION,
                # Both demo annotators judge every task, so span agreement has pairs to measure.
                overlap=2,
                lease_seconds=900,
                instructions=INSTRUCTIONS,
            )
        _members(project, annotators)
    if project.tasks.exists():
        return project, 0

    tasks = demo_tasks()
    lines = []
    with ImageBatch(project=project) as batch:
        for task in tasks:
            name = f"{task['line']['id']}.png"
            image = image_store(project=project, data=task["png"], name=name, batch=batch)
            lines.append({**task["line"], "image": f"sha256:{image.sha256}"})
        body = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()
        with transaction.atomic():
            batch.write_rows()
            job = services.import_create(
                project=project,
                user=creator,
                stream=io.BytesIO(body),
                size=len(body),
                filename="shapes.jsonl",
            )
            if job.status != ImportJob.Status.DONE:
                # Roll back the image rows too: nothing of a failed seed is kept.
                raise RuntimeError(f"demo import {job.pk} ended '{job.status}': {job.errors}")
    return project, job.created
