"""The hallucination kind's `vision_pairs` export, as the README loads it, trains a vision-language
model with TRL's DPOTrainer: a tiny LLaVA (a CLIP-like vision tower on a 2-layer Llama) built from
a config, on CPU, with a tokenizer trained here (nothing is downloaded).

The rows come from the export's own row function, and the pairs are chosen so that only the image
can tell chosen from rejected: the prompt text is the same in every row, the red square's chosen
answer is the blue square's rejected one. Without the image the summed DPO loss cannot fall below
ln 2 per pair; the test sees it fall, so the images reached the model row by row.
"""

import json
import math
from pathlib import Path

import pytest
from PIL import Image as PILImage

from annotation.kinds.base import ExportRecord
from annotation.kinds.hallucination.exports import vision_pairs_row

# The README's lines, executed as they stand: `export_dir` holds vision_pairs.jsonl and the
# unpacked image archive (its images/ folder), `model_path` a LLaVA-style model, `args` a DPOConfig.
README_SNIPPET = """\
from datasets import Image, List, load_dataset
from trl import DPOTrainer

dataset = load_dataset("json", data_files=f"{export_dir}/vision_pairs.jsonl", split="train")
dataset = dataset.map(lambda row: {"images": [f"{export_dir}/{path}" for path in row["images"]]})
dataset = dataset.cast_column("images", List(Image()))
trainer = DPOTrainer(model=model_path, args=args, train_dataset=dataset)
trainer.train()
"""

QUESTION = "What colour is the square?"
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}
# The chat template writes newlines as {{ '\n' }}: a literal newline inside the template string
# would be kept by Jinja but is easy to lose in the round trip through tokenizer_config.json.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] + ': ' }}"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for part in m['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>' }}{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)


def _export(export_dir: Path) -> list[dict]:
    """Two vision_pairs rows and their images laid out as the export and its image archive are."""
    (export_dir / "images").mkdir(parents=True)
    rows = []
    for i, (colour, rgb) in enumerate(COLOURS.items()):
        sha = f"{i + 1:064x}"
        PILImage.new("RGB", (40, 30), rgb).save(export_dir / "images" / f"{sha}.png")
        other = next(c for c in COLOURS if c != colour)
        record = ExportRecord(
            judgement_id=i + 1,
            task_id=i + 1,
            cursor=f"c1.1.{i + 1}",
            kind="hallucination",
            payload={"choice": "A", "helpful_choice": None, "spans": [], "correction": None},
            answer="A",
            rationale="",
            annotator="a-00000000",
            agreement=1.0,
            round=0,
            prompt=[{"role": "user", "content": QUESTION}],
            responses=[
                {"id": 2 * i + 1, "text": f"The square is {colour}.", "model": "m"},
                {"id": 2 * i + 2, "text": f"The square is {other}.", "model": "m"},
            ],
            external_id=None,
            image={"sha256": sha, "format": "png"},
            context={},
            metadata={},
            time_spent_ms=None,
            late=False,
            created_at="2026-12-01T00:00:00.000000+00:00",
        )
        rows.append(vision_pairs_row(record))
    with open(export_dir / "vision_pairs.jsonl", "w", encoding="utf-8") as out:
        out.writelines(json.dumps(row) + "\n" for row in rows)
    return rows


def _tiny_llava(path: Path) -> None:
    """A randomly initialised LLaVA with its processor, saved to `path`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = [f"user: {QUESTION} assistant: The square is red. The square is blue."] * 10
    backend.train_from_iterator(
        corpus,
        trainer=trainers.BpeTrainer(
            vocab_size=300,
            # <pad> is not id 0: TRL's collator reads `pad_token_id or eos_token_id`.
            special_tokens=["<unk>", "<pad>", "<s>", "</s>", "<image>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"},
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    # torchvision is not installed, so the PIL image processor; 32 px images in 8 px patches.
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ),
        tokenizer=tokenizer,
        patch_size=8,
        # "default" drops the CLS feature; the processor counts it among the tokens it expands
        # <image> into unless told of the one extra token, and the two would disagree.
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
            projection_dim=32,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=256,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        image_token_index=image_token,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)


@pytest.mark.slow
def test_vision_pairs_export_trains_a_llava_style_model_with_dpo(tmp_path, monkeypatch):
    from trl import DPOConfig

    export_dir = tmp_path / "export"
    rows = _export(export_dir)
    assert rows[0]["prompt"][0]["content"][0] == {"type": "image"}
    model_path = tmp_path / "tiny-llava"
    _tiny_llava(model_path)
    monkeypatch.chdir(tmp_path)  # anything the trainer writes stays in the test's folder
    args = DPOConfig(
        output_dir=str(tmp_path / "dpo"),
        max_steps=10,
        learning_rate=5e-3,
        beta=0.5,
        per_device_train_batch_size=2,
        use_cpu=True,
        gradient_checkpointing=False,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        seed=0,
    )
    namespace = {"export_dir": str(export_dir), "model_path": str(model_path), "args": args}
    exec(README_SNIPPET, namespace)

    dataset, trainer = namespace["dataset"], namespace["trainer"]
    assert type(dataset.features["images"].feature).__name__ == "Image"
    assert dataset[0]["images"][0].size == (40, 30)
    assert trainer.state.global_step == 10
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    # A DPO step starts from the reference itself: loss ln 2, no preference yet.
    assert logged[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)
    # Only the image separates the two rows, so a loss well under ln 2 means the model saw it.
    assert logged[-1]["loss"] < 0.45
    assert logged[-1]["rewards/accuracies"] == 1.0
