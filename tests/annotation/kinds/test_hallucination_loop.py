"""The hallucination kind's loop hooks: what a multimodal round trains on, reads and counts.

The rounds themselves run in tests/annotation/services/test_rounds_hallucination.py.
"""

from types import SimpleNamespace

import pytest

from annotation.kinds import kind_for
from annotation.kinds.hallucination.loop import HallucinationLoop, dense_config
from annotation.kinds.pairwise_loop import PairwiseLoop
from annotation.selectors.round_data import loop_hooks
from tests.annotation.image_support import media  # noqa: F401

SHA = "ab" * 32
HOOKS = HallucinationLoop()


def _row(image: str, chosen: str = "There is a red circle.", rejected: str = "There is a cat."):
    return {
        "images": [image],
        "prompt": [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": "What is there?"}],
            }
        ],
        "chosen": [{"role": "assistant", "content": [{"type": "text", "text": chosen}]}],
        "rejected": [{"role": "assistant", "content": [{"type": "text", "text": rejected}]}],
        "context": {"captions": ["A red circle."]},
    }


def test_the_loop_serves_hallucination_projects_on_vision_pairs():
    assert loop_hooks("hallucination") is kind_for("hallucination").loop
    assert isinstance(HOOKS, PairwiseLoop) and HOOKS.training_shape == "vision_pairs"
    assert HOOKS.training_shape in kind_for("hallucination").export_shapes
    assert HOOKS.reads_context and not PairwiseLoop.reads_context


@pytest.mark.parametrize(
    ("answer", "new_position", "score"),
    [
        ("A", 0, 1.0),  # π_r's answer (slot A) hallucinates less
        ("B", 0, 0.0),
        ("B", 1, 1.0),
        ("tie:A", 0, 1.0),  # as faithful, and π_r's is more helpful
        ("tie:B", 0, 0.0),
        ("tie:B", 1, 1.0),
        ("tie", 0, 0.5),  # as faithful and as helpful
        ("tie", 1, 0.5),
    ],
)
def test_a_blind_evaluation_counts_the_verdict_then_helpfulness(answer, new_position, score):
    assert HOOKS.evaluation_score(answer, new_position=new_position) == score


def test_a_model_labelled_task_becomes_a_vision_pair_with_its_image_and_facts():
    prompt = [{"role": "user", "content": "How many circles are there?"}]
    row = HOOKS.labelled_row(
        prompt=prompt,
        texts=["first answer", "second answer"],
        label={"choice": "B", "margin": 0.3},
        image={"sha256": SHA, "format": "jpeg"},
        context={"captions": ["Two circles."]},
    )
    assert row == {
        "images": [f"images/{SHA}.jpg"],
        "prompt": [
            {
                "role": "user",
                "content": [
                    {"type": "image"},
                    {"type": "text", "text": "How many circles are there?"},
                ],
            }
        ],
        "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "second answer"}]}],
        "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "first answer"}]}],
        "context": {"captions": ["Two circles."]},
    }
    # Without a stored image the row cannot train a vision policy: training_pairs leaves it out.
    imageless = HOOKS.labelled_row(prompt=prompt, texts=["a", "b"], label={"choice": "A"})
    assert imageless["images"] == []
    assert HOOKS.training_pairs([imageless, row]) == [row]


def test_a_correction_trains_the_policy_as_a_pair_and_an_empty_one_does_not():
    row = {
        "image": f"images/{SHA}.png",
        "question": "What is there?",
        "prompt": [{"role": "user", "content": "What is there?"}],
        "chosen": "There is a red circle.",
        "rejected": "There is a red circle. There is a cat.",
        "response": 1,
    }
    expected = _row(f"images/{SHA}.png", rejected="There is a red circle. There is a cat.")
    del expected["context"]
    expected["correction"] = True  # dense DPO weighs the tokens it changed
    expected["prompt"][0]["content"][1]["text"] = "What is there?"
    assert HOOKS.correction_shape in kind_for("hallucination").export_shapes
    assert HOOKS.correction_pairs([row]) == [expected]
    unchanged = {**row, "chosen": row["rejected"] + " "}
    emptied = {**row, "chosen": " "}
    assert HOOKS.correction_pairs([unchanged, emptied]) == []
    assert not PairwiseLoop.correction_shape  # the text loop takes none


def test_the_reward_model_is_measured_on_images_it_never_saw():
    rows = [_row(f"images/{i:064x}.png", chosen=f"answer {j}") for i in range(40) for j in range(3)]
    train, held_out = HOOKS.reward_split(rows, seed=7)
    assert train and held_out and len(train) + len(held_out) == len(rows)
    seen = {row["images"][0] for row in train}
    assert not seen & {row["images"][0] for row in held_out}
    # Fixed by the seed (the project's id), so an image stays on its side round after round.
    assert HOOKS.reward_split(rows, seed=7) == (train, held_out)
    assert HOOKS.reward_split(rows[:60], seed=7)[1] == [r for r in held_out if r in rows[:60]]


def test_the_reward_model_reads_the_facts_before_the_last_question():
    prompt = SimpleNamespace(
        messages=[
            {"role": "system", "content": "Answer about the picture."},
            {"role": "user", "content": "Is there a circle?"},
            {"role": "assistant", "content": "Yes."},
            {"role": "user", "content": "What colour is it?"},
        ],
        context={"captions": ["A red circle.", "A blue square."], "reference": "Red."},
    )
    read = HOOKS.reward_prompt(prompt)
    assert read[:3] == prompt.messages[:3]
    assert read[3] == {
        "role": "user",
        "content": "Image facts:\n- A red circle.\n- A blue square.\nReference answer: Red.\n\n"
        "Question: What colour is it?",
    }
    # The same text the Fact-RLHF ensemble was trained on for a row of that prompt.
    from training.fact_reward import fact_pairs

    trained = fact_pairs(
        [{"prompt": prompt.messages, "chosen": "x", "rejected": "y", "context": prompt.context}]
    )
    assert trained[0].prompt == read
    # No facts: the question alone.
    bare = HOOKS.reward_prompt(SimpleNamespace(messages=prompt.messages[1:2], context={}))
    assert bare == [{"role": "user", "content": "Question: Is there a circle?"}]


# --- which trainer a round's policy pairs go to ------------------------------------------------


def test_the_rounds_dpo_config_carries_over_to_dense_dpo():
    from training.dense_dpo import DenseDPOConfig
    from training.dpo import DPOConfig

    config = DPOConfig(
        learning_rate=2e-3,
        beta=0.3,
        epochs=2.0,
        batch_size=3,
        max_length=99,
        seed=7,
        device="cpu",
        lora=True,
        lora_r=4,
    )
    dense = dense_config(config)
    assert isinstance(dense, DenseDPOConfig)
    assert (dense.learning_rate, dense.beta, dense.epochs, dense.batch_size) == (2e-3, 0.3, 2.0, 3)
    assert (dense.max_length, dense.seed, dense.device, dense.lora, dense.lora_r) == (
        99,
        7,
        "cpu",
        True,
        4,
    )
    assert dense.gamma == 3.0 and not dense.normalize  # not settable per project: RLHF-V's γ


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("media")
def test_corrections_send_the_policy_through_dense_dpo_and_plain_pairs_through_trl(
    tmp_path, settings
):
    """train_policy on the project's stored images: with a correction among the pairs π_r is
    trained by dense DPO; without one, or for an IPO project, by TRL's vision DPO."""
    from dataclasses import replace

    from annotation.kinds.hallucination.exports import image_path
    from annotation.models import Prompt
    from annotation.selectors.round_data import prompt_images
    from tests.annotation.loop_support import hallucination_loop_project, tiny_vision_models
    from tests.factories import UserFactory
    from training.artifacts import read_manifest
    from training.dpo import DPOConfig

    policy, reward = tiny_vision_models(tmp_path / "models")
    settings.TANDEM_MODEL_ROOTS = [policy.parent]
    project = hallucination_loop_project(
        creator=UserFactory(is_staff=True),
        policy=policy,
        reward_backbone=reward,
        labelled=3,
        prompts_per_round=1,
        eval_prompts=0,
    )
    prompts = list(Prompt.objects.filter(project=project, split="train").order_by("id"))
    images = prompt_images(prompts)
    judged = [
        HOOKS.labelled_row(
            prompt=p.messages,
            texts=["There is a red circle.", "There is a cat on a boat."],
            label={"choice": "A"},
            image=images[p.image],
            context=p.context,
        )
        for p in prompts[:2]
    ]
    corrected = HOOKS.correction_pairs(
        [
            {
                "image": image_path(images[prompts[2].image]),
                "prompt": prompts[2].messages,
                "chosen": "There is a red circle.",
                "rejected": "There is a green circle.",
            }
        ]
    )
    config = DPOConfig(
        learning_rate=1e-3, beta=0.2, max_steps=2, batch_size=2, device="cpu", max_length=128
    )
    seen = []

    def train(pairs, config, name):
        return HOOKS.train_policy(
            pairs,
            config,
            project=project,
            policy_ref=str(policy),
            reference_ref=str(policy),
            root=tmp_path / "runs",
            name=name,
            progress=seen.append,
            data_cursor="c1",
            parent="round-0-policy",
        )

    dense = train(judged + corrected, config, "dense")
    manifest = read_manifest(dense.path)
    assert manifest.kind == "policy-vision-dense-dpo"
    assert (dense.metrics["pairs"], dense.metrics["corrections"]) == (3, 1)
    assert (manifest.config["beta"], manifest.config["gamma"]) == (0.2, 3.0)
    assert (manifest.data_cursor, manifest.parent) == ("c1", "round-0-policy")
    assert seen and seen[-1].stage == "vision-dense-dpo"

    plain = train(judged, config, "plain")
    assert read_manifest(plain.path).kind == "policy-vision-dpo"
    assert plain.metrics["pairs"] == 2
    # IPO has no dense form here: the corrections train as ordinary pairs under TRL's IPO loss.
    ipo = train(judged + corrected, replace(config, loss="ipo"), "ipo")
    assert read_manifest(ipo.path).kind == "policy-vision-dpo"
    assert read_manifest(ipo.path).config["loss"] == "ipo" and ipo.metrics["pairs"] == 3


# --- the vision option of the reward stage ----------------------------------------------------


def test_only_the_hallucination_loop_offers_a_reward_model_that_sees_the_image():
    assert HOOKS.reward_models == ("text", "vision")
    assert PairwiseLoop.reward_models == ("text",)


def test_the_reward_model_setting_refuses_what_it_does_not_know(settings, tmp_path):
    from annotation.errors import InvalidInput
    from annotation.loop import LoopSettings

    with pytest.raises(InvalidInput, match=r"^reward_model: must be one of text, vision$") as bad:
        LoopSettings.parse({"reward_model": "pixels"})
    assert bad.value.errors == [{"field": "reward_model", "message": "must be one of text, vision"}]
    assert LoopSettings.parse({}).reward_model == "text"  # today's behaviour stays the default
    # The vision backbone is a model reference like the others: a hub id, or a path inside a
    # model root, never any other directory.
    settings.TANDEM_MODEL_ROOTS = [tmp_path / "models"]
    (tmp_path / "models" / "llava").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(InvalidInput, match=r"^vision_reward_backbone: a path must lie inside"):
        LoopSettings.parse({"reward_model": "vision", "vision_reward_backbone": str(tmp_path)})
    with pytest.raises(InvalidInput, match=r"^vision_reward_backbone: has characters or a shape"):
        LoopSettings.parse({"vision_reward_backbone": "../elsewhere"})
    for reference in ("llava-hf/llava-1.5-7b-hf", str(tmp_path / "models" / "llava")):
        chosen = LoopSettings.parse({"reward_model": "vision", "vision_reward_backbone": reference})
        assert (chosen.reward_model, chosen.vision_reward_backbone) == ("vision", reference)


@pytest.mark.django_db
def test_a_project_whose_kind_has_no_vision_reward_is_refused_it():
    from annotation import services
    from annotation.errors import InvalidInput
    from annotation.models import FeedbackKind
    from annotation.services.rounds import loop_configure
    from tests.factories import ProjectFactory, UserFactory

    text = ProjectFactory()
    with pytest.raises(InvalidInput, match=r"^reward_model: pairwise projects offer text$") as bad:
        loop_configure(project=text, data={"reward_model": "vision"})
    assert bad.value.errors[0]["field"] == "reward_model"
    text.refresh_from_db()
    assert text.loop.get("reward_model", "text") == "text"  # nothing stored
    images = services.project_create(
        creator=UserFactory(is_staff=True),
        name="Scenes",
        kind=FeedbackKind.HALLUCINATION,
        overlap=1,
        lease_seconds=300,
    )
    assert loop_configure(project=images, data={"reward_model": "vision"}).reward_model == "vision"
    images.refresh_from_db()
    assert images.loop["reward_model"] == "vision"


def test_the_vision_reward_takes_one_head_per_member_and_the_overrides_it_shares():
    from annotation.kinds.hallucination.vision_reward import vision_config
    from annotation.loop import LoopSettings

    loop = LoopSettings.parse(
        {
            "ensemble_members": 4,
            "reward": {"learning_rate": 2e-5, "epochs": 2.0, "seed": 9, "max_length": 160},
        }
    )
    config = vision_config(loop)
    assert (config.heads, config.learning_rate, config.epochs, config.seed) == (4, 2e-5, 2.0, 9)
    assert not hasattr(config, "max_length")  # a text-encoding setting the VLM has no use for
    assert vision_config(LoopSettings.parse({})).learning_rate == 1e-5  # VLMRewardConfig's own
