"""Vision DPO: a vision-language policy trained on the hallucination kind's ``vision_pairs`` rows.

Step 4 of the multimodal loop (issue 12), the image counterpart of ``training.dpo``: round r
warm-starts from π_{r-1} (``policy_ref``) and is regularised towards the FIXED round-0 reference
π_0 (``reference_ref``), the iterative recipe of Dong et al. 2024 ("RLHF Workflow"); the loss is
DPO's −log σ(β·Δ) (Rafailov et al. 2023) or IPO's, through TRL's ``DPOTrainer``, which feeds the
images through the model's processor. LLaVA-RLHF and RLHF-V train on exactly these pairs: an
image, a question, a less and a more hallucinated answer.

Rows are the export's (DESIGN.md, "Export contract"; ``annotation/kinds/hallucination/exports``):
``{"images": ["images/<sha256>.<ext>"], "prompt": [...], "chosen": [...], "rejected": [...], ...}``
with conversational messages whose content is TRL's vision parts. Image paths are relative to the
export directory (``images``) or resolved by a loader; every row is checked here, before any
model is loaded, and a bad one raises ``RowError`` naming its row and field.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from training.artifacts import ProgressCallback
from training.data import ROLES, RowError
from training.dpo import DPOConfig
from training.policy_base import (
    PolicyResult,
    lora_config,
    manifest_config,
    progress_callbacks,
    publish_model,
    same_model,
    summarise_metrics,
    train_quietly,
    training_run,
    trl_training_args,
)

if TYPE_CHECKING:
    from datasets import Dataset
    from PIL import Image

ImageLoader = Callable[[str], "Image.Image"]
"""Turns a row's image path (as exported: ``images/<sha256>.<ext>``) into a PIL image."""

__all__ = ["DPOConfig", "ImageLoader", "train_vision_dpo", "vision_dataset", "vision_rows"]


def _content(value: Any, row: int, name: str, *, images_allowed: bool) -> int:
    """Check one message's content; return how many image parts it holds."""
    if isinstance(value, str):
        return 0
    if not isinstance(value, list) or not value:
        raise RowError(row, name, "content must be a string or a non-empty list of parts")
    images = 0
    for part in value:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image" and images_allowed:
            images += 1
        elif kind == "text" and isinstance(part.get("text"), str):
            continue
        else:
            allowed = "{'type': 'image'} or " if images_allowed else ""
            raise RowError(row, name, f"each part must be {allowed}{{'type': 'text', 'text': str}}")
    return images


def _conversation(value: Any, row: int, name: str, *, images_allowed: bool) -> int:
    if not isinstance(value, list) or not value:
        raise RowError(row, name, "expected a non-empty list of messages")
    images = 0
    for message in value:
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise RowError(row, name, f"each message needs a role among {sorted(ROLES)}")
        if "content" not in message:
            raise RowError(row, name, "each message needs a content")
        images += _content(message["content"], row, name, images_allowed=images_allowed)
    return images


def _image_path(value: Any, row: int) -> str:
    """A relative path inside the export, refused when absolute or climbing out with ``..``."""
    if not isinstance(value, str) or not value.strip():
        raise RowError(row, "images", "each image must be a non-empty path string")
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts or "\\" in value:
        raise RowError(row, "images", f"{value!r} must be a relative path inside the export")
    return value


def vision_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Validate ``vision_pairs`` rows and keep what DPO reads: images, prompt, chosen, rejected.

    Ties (``"tie": true``) are skipped: DPO has no tie term. The prompt must hold one image part
    per entry of ``images``; completions are assistant text only.
    """
    kept = []
    for index, row in enumerate(rows, start=1):
        if not isinstance(row, Mapping):
            raise RowError(index, None, f"expected an object, got {type(row).__name__}")
        if row.get("tie") is True:
            continue
        images = row.get("images")
        if not isinstance(images, list) or not images:
            raise RowError(index, "images", "expected a non-empty list of image paths")
        paths = [_image_path(value, index) for value in images]
        named = _conversation(row.get("prompt"), index, "prompt", images_allowed=True)
        if named != len(paths):
            raise RowError(index, "prompt", f"holds {named} image parts for {len(paths)} images")
        for name in ("chosen", "rejected"):
            _conversation(row.get(name), index, name, images_allowed=False)
            if any(m["role"] != "assistant" for m in row[name]):
                raise RowError(index, name, "completions must be assistant messages")
        kept.append(
            {
                "images": paths,
                "prompt": row["prompt"],
                "chosen": row["chosen"],
                "rejected": row["rejected"],
            }
        )
    return kept


def _export_loader(root: Path) -> Callable[[str], Path]:
    resolved_root = root.resolve()

    def locate(relative: str) -> Path:
        path = (resolved_root / relative).resolve()
        # A symlink inside the export could still point out of it.
        if not path.is_relative_to(resolved_root) or not path.is_file():
            raise FileNotFoundError(f"{relative!r} is not a file inside {root}")
        return path

    return locate


def vision_dataset(rows: Sequence[dict[str, Any]], images: str | Path | ImageLoader) -> Dataset:
    """A TRL-ready ``datasets.Dataset`` of validated rows, its ``images`` column of type Image.

    ``images`` is the export directory (paths are joined to it, must stay inside it and open as
    images; they are decoded lazily, a batch at a time) or a loader returning PIL images (decoded
    here, all at once). A missing or unreadable image raises ``RowError`` for its row.
    """
    from datasets import Dataset, List
    from datasets import Image as ImageFeature
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    locate = None if callable(images) else _export_loader(Path(images))
    prepared = []
    for index, row in enumerate(rows, start=1):
        opened: list[Any] = []
        for relative in row["images"]:
            try:
                if locate is not None:
                    path = locate(relative)
                    with PILImage.open(path) as probe:
                        probe.verify()  # a truncated or non-image file fails here, not mid-run
                    opened.append(str(path))
                else:
                    opened.append(images(relative).convert("RGB"))  # type: ignore[operator]
            except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
                raise RowError(index, "images", f"cannot open {relative!r}: {exc}") from exc
        prepared.append({**row, "images": opened})
    dataset = Dataset.from_list(prepared)
    return dataset.cast_column("images", List(ImageFeature()))


def load_vlm_for_training(ref: str | Path, *, train_image_encoder: bool = False) -> Any:
    """Load a vision-language model in fp32 (mixed precision keeps fp32 master weights), its
    image encoder frozen unless `train_image_encoder` (training.vision.freeze_image_encoder)."""
    import torch
    from transformers import AutoModelForImageTextToText

    from training.vision import freeze_image_encoder

    model = AutoModelForImageTextToText.from_pretrained(str(ref), dtype=torch.float32)
    if not train_image_encoder:
        freeze_image_encoder(model)
    return model


def train_vision_dpo(
    rows: Iterable[Mapping[str, Any]],
    config: DPOConfig,
    *,
    images: str | Path | ImageLoader,
    policy_ref: str | Path,
    reference_ref: str | Path,
    root: str | Path,
    name: str,
    eval_rows: Iterable[Mapping[str, Any]] | None = None,
    progress: ProgressCallback | None = None,
    data_cursor: str | None = None,
    parent: str | None = None,
) -> PolicyResult:
    """Train π_r from π_{r-1} (``policy_ref``) on ``vision_pairs`` rows with DPO/IPO against π_0.

    ``images``: the export directory or an ``ImageLoader`` (see ``vision_dataset``). Metrics as
    ``training.dpo.train_dpo``'s: ``loss_first``, ``loss_final``, TRL's last
    ``rewards/accuracies`` and ``rewards/margins``, ``logps/*``, ``steps``, ``seconds``, ``pairs``;
    with ``eval_rows`` also ``eval_*``. Publishes ``root/name`` (kind ``policy-vision-dpo``), the
    model with its processor, atomically.
    """
    from transformers import AutoProcessor
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    train_rows = vision_rows(rows)
    if not train_rows:
        raise ValueError("no untied vision preference pairs to train on")
    train_dataset = vision_dataset(train_rows, images)
    eval_dataset = vision_dataset(vision_rows(eval_rows), images) if eval_rows is not None else None
    processor = AutoProcessor.from_pretrained(str(policy_ref))
    run_config = manifest_config(
        config, policy_ref=policy_ref, reference_ref=reference_ref, trainer="trl.DPOTrainer"
    )
    with training_run(
        root,
        name,
        kind="policy-vision-dpo",
        config=run_config,
        data_cursor=data_cursor,
        parent=parent,
    ) as (run, scratch):
        args = trl_training_args(
            TRLDPOConfig,
            config,
            scratch,
            loss_type=[config.loss],
            beta=config.beta,
            max_length=config.max_length,
        )
        model = load_vlm_for_training(policy_ref, train_image_encoder=config.train_image_encoder)
        same = same_model(policy_ref, reference_ref)
        # As in training.dpo: a fresh LoRA adapter on π_0 gives π_0 back when disabled.
        ref_model = None if (config.lora and same) else load_vlm_for_training(reference_ref)
        trainer = DPOTrainer(
            model=model,
            ref_model=ref_model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processor,
            callbacks=progress_callbacks(progress, "vision-dpo"),
            peft_config=lora_config(config) if config.lora else None,
        )
        metrics = summarise_metrics(trainer, train_quietly(trainer), ("rewards/", "logps/"))
        if eval_dataset is not None:
            evaluation = trainer.evaluate()
            metrics.update({k: float(v) for k, v in evaluation.items() if k.startswith("eval_")})
        metrics["pairs"] = len(train_rows)
        publish_model(trainer, processor, run.path, config.lora)
        run.metrics = metrics
    return PolicyResult(path=Path(root) / name, metrics=metrics)
