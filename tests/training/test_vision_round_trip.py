"""The hallucination kind's `vision_pairs` export, as the README loads it, trains a vision-language
model with TRL's DPOTrainer: a tiny LLaVA (a CLIP-like vision tower on a 2-layer Llama) built from
a config by `training.vision.build_tiny_vlm`, on CPU, with a tokenizer trained here (nothing is
downloaded).

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
from training.vision import build_tiny_vlm

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


@pytest.mark.slow
def test_vision_pairs_export_trains_a_llava_style_model_with_dpo(tmp_path, monkeypatch):
    from trl import DPOConfig

    export_dir = tmp_path / "export"
    rows = _export(export_dir)
    assert rows[0]["prompt"][0]["content"][0] == {"type": "image"}
    model_path = tmp_path / "tiny-llava"
    # The package's tiny LLaVA, its tokenizer trained on this test's words (nothing downloaded).
    build_tiny_vlm(model_path, corpus=[f"{QUESTION} The square is red. The square is blue."] * 10)
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
