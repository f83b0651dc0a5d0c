"""The hallucination kind's simulated annotator: an oracle that knows every task's scene.

`simulate_annotators` finds it through the kind's `oracle_annotator`. For
each leased task it does what the demo's instructions ask of a person: it marks every false claim
of each response as a span with its category, answers the response with fewer false claims (after
a tie, the more informative one, i.e. with more true claims, or a tie again), and for a share of the
tasks corrects the worse response (RLHF-V's correctional feedback): by default as RLHF-V's
annotators do, fixing each false claim's made-up words (`training.scene_corrections`), or, with
the style "delete", by deleting its false sentences.

It can only judge projects built from `training.scenes`: each prompt's metadata holds its scene
(`{"scene": Scene.to_dict()}`, as `annotation.demo_hallucination` stores it). The lease an
annotator receives never carries metadata; this oracle is a server-side stand-in for a person
looking at the picture, so it reads the scene from the database by task id.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from training import scene_corrections, scenes

from ...errors import InvalidInput
from ...models import Project, Prompt
from ..base import field_error
from .payload import DEFAULT_CATEGORIES

# Where a claim's category is not among the project's, a person would file it under this one if
# the project has it, and otherwise could not mark it at all.
FALLBACK_CATEGORY = "other"

# How the oracle corrects: "fix" is what RLHF-V's annotators do (change the made-up words, so dense
# DPO gets a token-level signal), hence the default; "delete" drops the false sentences (this
# oracle's earlier behaviour), kept so the two can be compared.
CORRECTION_STYLES = ("fix", "delete")
DEFAULT_CORRECTION_STYLE = "fix"


def without_claims(text: str, claims: Sequence[scenes.Claim]) -> str:
    """`text` with the claims' sentences deleted, each with the space that joined it to the text
    before it (or after it, for a first sentence), so the rest reads as the same prose."""
    for claim in sorted(claims, reverse=True):
        start, end = claim.start, claim.end
        if start > 0 and text[start - 1] == " ":
            start -= 1
        elif end < len(text) and text[end] == " ":
            end += 1
        text = text[:start] + text[end:]
    return text


def judge(
    scene: scenes.Scene,
    texts: Sequence[str],
    *,
    categories: Sequence[str] = DEFAULT_CATEGORIES,
    correct: bool = False,
    correction_style: str = DEFAULT_CORRECTION_STYLE,
) -> dict[str, Any]:
    """The judgement payload of a careful annotator who knows the scene, for responses A and B.

    Every false claim becomes a span {response, start, end, category} (code-point offsets, as
    `claims_of` gives them); with `correct`, the response with the most false claims (A on a tie)
    is corrected, when it has any: each false claim fixed to its nearest true statement
    (`correction_style` "fix") or deleted ("delete").
    """
    claims = [scenes.claims_of(scene, text) for text in texts]
    false = [[c for c in found if not c.true] for found in claims]
    true = [len(found) - len(wrong) for found, wrong in zip(claims, false, strict=True)]
    payload: dict[str, Any] = {"choice": _better(len(false[1]), len(false[0]))}
    if payload["choice"] == "tie":
        payload["helpful_choice"] = _better(true[0], true[1])
    spans = []
    for position, wrong in enumerate(false):
        for claim in wrong:
            category = claim.category if claim.category in categories else FALLBACK_CATEGORY
            if category in categories:
                spans.append(
                    {
                        "response": position,
                        "start": claim.start,
                        "end": claim.end,
                        "category": category,
                    }
                )
    payload["spans"] = spans
    worse = 0 if len(false[0]) >= len(false[1]) else 1
    if correct and false[worse]:
        if correction_style == "fix":
            text = scene_corrections.corrected(scene, texts[worse])
        elif correction_style == "delete":
            text = without_claims(texts[worse], false[worse])
        else:
            raise ValueError(f"unknown correction style {correction_style!r}")
        payload["correction"] = {"response": worse, "text": text}
    return payload


def _better(a: int, b: int) -> str:
    """ "A" when a > b, "B" when b > a, else "tie"."""
    return "A" if a > b else "B" if b > a else "tie"


class SceneOracle:
    """The simulated annotator of one hallucination project (shared by the command's threads:
    it holds no per-annotator state).

    Options: `correction_share` in [0, 1], the share of tasks that get a correction (decided per
    task from `seed` and the task id, so a retried submit gives the same payload), and
    `correction_style`, how they are corrected (one of CORRECTION_STYLES; default "fix").
    """

    def __init__(self, *, project: Project, options: Mapping[str, Any]):
        share = options.get("correction_share")
        share = 0.0 if share is None else share
        if not isinstance(share, int | float) or not 0.0 <= share <= 1.0:
            raise field_error("correction_share", "must be a number from 0 to 1")
        style = options.get("correction_style") or DEFAULT_CORRECTION_STYLE
        if style not in CORRECTION_STYLES:
            raise field_error(
                "correction_style",
                f"must be one of {', '.join(CORRECTION_STYLES)} (got {style!r}): fix each false "
                "claim's made-up words, or delete its sentence",
            )
        self.correction_style = style
        self.project_id = project.pk
        self.correction_share = float(share)
        self.seed = options.get("seed") or 0
        settings = project.kind_settings or {}
        self.categories = tuple(settings.get("categories") or DEFAULT_CATEGORIES)

    def scene(self, task_id: int) -> scenes.Scene:
        """The scene of the task's prompt, from its metadata; InvalidInput naming the task when
        the prompt has none (a project not built from `training.scenes`)."""
        metadata = (
            Prompt.objects.filter(project_id=self.project_id, tasks__id=task_id)
            .values_list("metadata", flat=True)
            .first()
        )
        data = metadata.get("scene") if isinstance(metadata, dict) else None
        try:
            return scenes.Scene.from_dict(data)  # type: ignore[arg-type]
        except (TypeError, KeyError, AttributeError):
            raise InvalidInput(
                f"task {task_id}: its prompt's metadata holds no scene, so the oracle cannot "
                "judge it (simulated annotators need a project built from training.scenes, "
                "such as the demo's)",
                errors=[{"field": "metadata.scene", "message": f"missing in task {task_id}"}],
            ) from None

    def answer(self, task: Mapping[str, Any]) -> dict[str, Any]:
        """The payload for a leased task ({"id", "responses": [{"text"}, ...], ...})."""
        texts = [response["text"] for response in task["responses"]]
        correct = random.Random(f"{self.seed}:{task['id']}").random() < self.correction_share
        return judge(
            self.scene(task["id"]),
            texts,
            categories=self.categories,
            correct=correct,
            correction_style=self.correction_style,
        )

    def report(self) -> list[str]:
        """The project page's hallucination rates per response source, as text lines."""
        from ...selectors.hallucination import hallucination_stats

        stats = hallucination_stats(project=Project.objects.get(pk=self.project_id))
        lines = [f"{'source':<24} {'judged':>6} {'hallucinated':>12} {'spans/resp':>10}"]
        for row in stats.sources:
            share = "-" if row.hallucinated is None else f"{row.hallucinated:.1%}"
            spans = "-" if row.spans_per_response is None else f"{row.spans_per_response:.2f}"
            lines.append(f"{row.source:<24} {row.judged:>6} {share:>12} {spans:>10}")
        return lines
