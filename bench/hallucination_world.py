"""The synthetic world of bench/hallucination_loop.py: scenes, prompts, the oracle, π_0's warm start.

Everything true is known (training.scenes): a prompt is a drawn scene and one question about it;
the oracle reads any answer back with `claims_of` and counts its false claims per category and
its distinct true claims. Chosen for a tiny model on CPU (the finding of
tests/training/test_vision_dpo.py: a fresh tiny tower at 32 px barely sees a scene's small
shapes): scenes of two large shapes of different kinds, and questions whose direct answer is
about presence, count, colour or relation (all shapes large, so comparisons are moot; a false
size claim is then always "small", which a policy can learn to avoid without looking). The loop
draws them at 48 px in 16 px patches: 9 image tokens, about one per grid cell.

π_0 is warm-started by supervised fine-tuning on answers written by `respond`: each answer makes
2 true claims and, with probability `false_rate` (0.4), one false claim too, so π_0 hallucinates
at a known rate and a hallucinating answer is not less informative than a faithful one. Beside
them the warm start reads each scene's true captions under a question the bench never asks
(`caption_examples`, LLaVA's feature-alignment stage), and keeps the random vision tower fixed.
Measured on this bench (issue 12): with the tower trained along and CLIP's pixel normalisation
(the light background far from its mean, so the shapes were a small part of every patch) the
projector muted the image within the first steps, and π_0 gave the same answers whatever the
picture; the loop now centres pixels on the background (`build_tiny_vlm(image_mean=...)`).
Even then the warm start learns to read colours late: at 3,000 steps (loss ~0.3) π_0's samples
(temperature 1) still named colours at random and hallucinated ~90% of the time, mostly made-up
colour–shape pairs; between 3,000 and 4,000 steps the loss drops to ~0.15 and π_0 binds colours
to shapes, hallucinating ~65% (the 40% it was taught, plus its own slips). The loop therefore
warm-starts for 9,000 steps; and its preference training keeps the image encoder frozen
(training.vision.freeze_image_encoder), since training it along undid that reading: every DPO
round then named more objects that are not in the picture.

The oracle's corrections (training.scene_corrections, RLHF-V's correctional feedback) fix each
false claim with the fewest words changed, as a careful annotator does ("... is blue." → "... is green."), so dense
DPO's γ lands on the made-up words and their fixes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from training import scenes
from training.scene_corrections import corrected
from training.scenes import Question, Scene

CATEGORIES = ("object", "attribute", "count", "relation")
ASKED = (None, "object", "count", "attribute", "relation")


@dataclass(frozen=True)
class Prompt:
    """One scene and one question about it; `key` names its image (``images/<key>.png``)."""

    key: str
    scene: Scene
    question: Question

    @property
    def image_path(self) -> str:
        return f"images/{self.key}.png"

    def messages(self) -> list[dict[str, Any]]:
        return [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": self.question.text}],
            }
        ]


def bench_scene(rng: random.Random) -> Scene:
    """A scene of two large shapes of different kinds: what a tiny tower at 64 px can see."""
    scene = scenes.random_scene(rng, min_items=2, max_items=2)
    return Scene(items=tuple(replace(item, size="large") for item in scene.items))


def make_prompts(rng: random.Random, n: int, prefix: str) -> list[Prompt]:
    """`n` prompts, each on a fresh `bench_scene`, the question drawn among ASKED categories."""
    out = []
    for i in range(n):
        scene = bench_scene(rng)
        asked = [q for q in scenes.questions(scene) if q.category in ASKED]
        out.append(Prompt(f"{prefix}{i}", scene, rng.choice(asked)))
    return out


class Images:
    """The drawn scenes by export path: the ImageLoader train_vision_dpo takes, and the generator's."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._by_path: dict[str, Any] = {}

    def add(self, prompts: Sequence[Prompt]) -> None:
        for prompt in prompts:
            if prompt.image_path not in self._by_path:
                self._by_path[prompt.image_path] = scenes.draw(prompt.scene, self.size)

    def __call__(self, path: str) -> Any:
        return self._by_path[path]


# --- the oracle -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What the oracle finds in one answer: false claims per category, distinct true claims."""

    false_by_category: dict[str, int]
    true_claims: int

    @property
    def false_claims(self) -> int:
        return sum(self.false_by_category.values())

    @property
    def utility(self) -> tuple[int, int]:
        """Fewer false claims first; after a tie, more true claims (an empty answer is no win)."""
        return (-self.false_claims, self.true_claims)


def judge(scene: Scene, text: str) -> Verdict:
    """Claims of `text` checked against the scene. True claims count once per distinct sentence,
    so an answer cannot buy informativeness by repeating itself."""
    false_by_category = {c: 0 for c in scenes.CATEGORIES}
    true_sentences = set()
    for claim in scenes.claims_of(scene, text):
        if claim.true:
            true_sentences.add(text[claim.start : claim.end])
        else:
            false_by_category[claim.category] += 1
    return Verdict(false_by_category, len(true_sentences))


def prefer(scene: Scene, first: str, second: str) -> int:
    """+1 when the oracle prefers `first`, -1 for `second`, 0 for a tie."""
    a, b = judge(scene, first).utility, judge(scene, second).utility
    return (a > b) - (a < b)


def best_vs_worst(
    prompts: Sequence[Prompt], samples: Sequence[Sequence[str]]
) -> list[tuple[Prompt, str, str]]:
    """Per prompt, the oracle's best sample against its worst (none when all tie); empty samples
    are left out (see `labelled_pairs`)."""
    pairs = []
    for prompt, texts in zip(prompts, samples, strict=True):
        ranked = sorted(
            {t for t in texts if t.strip()}, key=lambda t: (judge(prompt.scene, t).utility, t)
        )
        if ranked and prefer(prompt.scene, ranked[-1], ranked[0]) > 0:
            pairs.append((prompt, ranked[-1], ranked[0]))
    return pairs


def labelled_pairs(
    prompts: Sequence[Prompt], samples: Sequence[Sequence[str]]
) -> list[tuple[Prompt, str, str]]:
    """Every pair of a prompt's samples the oracle does not call a tie, as (prompt, chosen, rejected);
    identical texts are one sample. An empty sample (the policy wrote EOS at once) is left out:
    the fact reward model and DPO need a response on both sides of a pair."""
    pairs = []
    for prompt, texts in zip(prompts, samples, strict=True):
        distinct = list(dict.fromkeys(t for t in texts if t.strip()))
        for i in range(len(distinct)):
            for j in range(i + 1, len(distinct)):
                order = prefer(prompt.scene, distinct[i], distinct[j])
                if order:
                    chosen, rejected = (
                        (distinct[i], distinct[j]) if order > 0 else (distinct[j], distinct[i])
                    )
                    pairs.append((prompt, chosen, rejected))
    return pairs


def vision_pair_row(prompt: Prompt, chosen: str, rejected: str) -> dict[str, Any]:
    """The hallucination kind's vision_pairs export row, plus the facts a reward model may read."""

    def reply(text: str) -> list[dict[str, Any]]:
        return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]

    return {
        "images": [prompt.image_path],
        "prompt": prompt.messages(),
        "chosen": reply(chosen),
        "rejected": reply(rejected),
        "context": {"captions": scenes.captions(prompt.scene)},
    }


def evaluate(prompts: Sequence[Prompt], samples: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Hallucination rate (answers with >= 1 false claim), per category, informativeness."""
    verdicts = [judge(p.scene, t) for p, texts in zip(prompts, samples, strict=True) for t in texts]
    n = len(verdicts)
    return {
        "hallucination_rate": sum(v.false_claims > 0 for v in verdicts) / n,
        "per_category": {
            c: sum(v.false_by_category[c] > 0 for v in verdicts) / n for c in scenes.CATEGORIES
        },
        "informativeness": sum(v.true_claims for v in verdicts) / n,
    }


def win_rate(
    prompts: Sequence[Prompt], ours: Sequence[Sequence[str]], theirs: Sequence[Sequence[str]]
) -> float:
    """Oracle win rate of `ours` over `theirs`, sample i against sample i; ties count half."""
    wins = [
        (1 + prefer(p.scene, a, b)) / 2
        for p, xs, ys in zip(prompts, ours, theirs, strict=True)
        for a, b in zip(xs, ys, strict=True)
    ]
    return sum(wins) / len(wins)


# --- π_0 ------------------------------------------------------------------------------------------


def sft_examples(
    prompts: Sequence[Prompt], rng: random.Random, per_prompt: int, false_rate: float
) -> list[tuple[Prompt, str]]:
    """Answers written by `respond`: 2 true claims, plus one false one with probability false_rate."""
    out = []
    for prompt in prompts:
        for _ in range(per_prompt):
            n_false = int(rng.random() < false_rate)
            try:
                response = scenes.respond(
                    prompt.scene, prompt.question, rng, 2, n_false, CATEGORIES
                )
            except ValueError:  # a scene with too few claims of one kind left to make
                continue
            out.append((prompt, response.text))
    return out


CAPTION_QUESTION = "Write a caption for the image."


def caption_examples(prompts: Sequence[Prompt]) -> list[tuple[Prompt, str]]:
    """The scenes' true captions, asked by a question the bench never asks (LLaVA's stage 1:
    text that only the image determines, so the tower's features are read, not muted)."""
    question = Question(CAPTION_QUESTION)
    return [
        (replace(prompt, question=question), " ".join(scenes.captions(prompt.scene)))
        for prompt in prompts
    ]


def warm_start(
    path: Path,
    init: Path,
    examples: Sequence[tuple[Prompt, str]],
    images: Images,
    *,
    steps: int,
    batch_size: int = 16,
    learning_rate: float = 3e-3,
    tower_learning_rate: float = 0.0,
    seed: int = 0,
) -> Path:
    """π_0: the tiny VLM at `init` fitted on (prompt, answer) examples, loss on the answer only.

    A plain AdamW loop rather than TRL's SFTTrainer: the inputs are encoded once (the processor's
    image tokens and pixels, then the answer's ids and EOS), and each step is one forward pass.
    The vision tower trains at `tower_learning_rate`; at 0 (the default) it stays as built: trained
    with the rest from scratch, it learnt to give every image the same features (module docstring).
    """
    import torch

    from training.vision import load_vlm

    model, processor = load_vlm(init, "cpu", dtype="float32")
    tokenizer = processor.tokenizer
    encoded = []
    for prompt, answer in examples:
        text = processor.apply_chat_template(
            prompt.messages(), tokenize=False, add_generation_prompt=True
        )
        batch = processor(
            images=[images(prompt.image_path)],
            text=[str(text)],
            add_special_tokens=False,
            return_tensors="pt",
        )
        answer_ids = tokenizer(answer + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        encoded.append((batch["input_ids"][0].tolist(), answer_ids, batch["pixel_values"][0]))
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tower = model.model.vision_tower
    for parameter in tower.parameters():
        parameter.requires_grad_(tower_learning_rate > 0)
    tower_ids = {id(p) for p in tower.parameters()}
    groups = [{"params": [p for p in model.parameters() if id(p) not in tower_ids]}]
    if tower_learning_rate > 0:
        groups.append({"params": list(tower.parameters()), "lr": tower_learning_rate})
    optimizer = torch.optim.AdamW(groups, lr=learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / max(steps, 1))
    model.train()
    for step in range(steps):
        chunk = rng.sample(encoded, min(batch_size, len(encoded)))
        width = max(len(p) + len(a) for p, a, _ in chunk)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id)
        labels = torch.full((len(chunk), width), -100)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (p, a, _) in enumerate(chunk):
            ids[row, : len(p) + len(a)] = torch.tensor(p + a)
            labels[row, len(p) : len(p) + len(a)] = torch.tensor(a)
            mask[row, : len(p) + len(a)] = 1
        pixels = torch.stack([px for _, _, px in chunk])
        loss = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=labels).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if (step + 1) % 100 == 0:
            print(f"  sft step {step + 1}/{steps}: loss {loss.item():.3f}", flush=True)
    model.eval()
    model.save_pretrained(str(path))
    processor.save_pretrained(str(path))
    return path


# --- corrections (RLHF-V) ---------------------------------------------------------------------------


def correction_rows(
    prompts: Sequence[Prompt], samples: Sequence[Sequence[str]], rng: random.Random, share: float
) -> list[dict[str, Any]]:
    """For a `share` of the hallucinating samples, a corrections row (the fix chosen over the
    original, marked ``correction``), as the hallucination kind's loop passes them to dense DPO."""
    rows = []
    for prompt, texts in zip(prompts, samples, strict=True):
        for text in dict.fromkeys(t for t in texts if t.strip()):
            if judge(prompt.scene, text).false_claims and rng.random() < share:
                rows.append(
                    {
                        **vision_pair_row(prompt, corrected(prompt.scene, text), text),
                        "correction": True,
                    }
                )
    return rows
