"""GPU throughput check, vision-language part: vision DPO and generation with images on a ~0.5B LLaVA.

``python -m bench.gpu_check --vlm`` (``bench.gpu_check`` parses the arguments). Nothing is
downloaded: ``training.vision.build_tiny_vlm`` builds a LLaVA-style model from configs at the
sizes given (default: a ViT-B-like tower, 336 px images in 14 px patches, 576 image tokens,
under a ~0.4B Llama; random weights, whose values do not change a step's speed), and images
are scenes drawn by ``training.scenes``. Each measurement runs the library's own entry point:

- vision DPO: ``training.vision_dpo.train_vision_dpo`` (TRL ``DPOTrainer``, bf16, reference
  model on the card, image tower frozen as by default);
- generation: ``training.vision_generation`` through transformers, and through vLLM when
  ``import vllm`` works (otherwise the entry says "vLLM not installed").

FLOPs (Kaplan et al. 2020; Chowdhery et al. 2022, App. B: 2·N per token forward, 6·N forward
and backward; attention's own FLOPs left out, as in the text check). N_vis is the image tower,
N_proj the projector, N_lm the language model less its input embedding table (a lookup does no
multiply; the output head does). An image is P = (size/patch)² + 1 tower positions (the CLS
included) and I = (size/patch)² image tokens in the language model; T is a sequence's real
tokens (text and image, padding excluded). TRL's vision collator puts each pair's image in both
the chosen and the rejected sequence, so the tower runs twice per pair:

    policy step, per pair:  Σ_{s ∈ chosen, rejected} (6·N_lm·T_s + 6·N_proj·I + 2·N_vis·P)
    reference, per pair:    Σ_{s ∈ chosen, rejected} (2·N_lm·T_s + 2·N_proj·I + 2·N_vis·P)

(the frozen tower is forward-only: its output needs no gradient). ``mfu`` is the policy's FLOPs
per second over the card's bf16 peak, ``mfu_with_reference`` adds the reference forward. For
generation the useful work of a prompt is one prefill, 2·N_vis·P + 2·N_proj·I + 2·N_lm·T_prompt,
plus 2·N_lm per generated token: ``mfu`` counts both (transformers repeats the prefill for each
of the K samples; that repeat is waste, not model FLOPs), ``mfu_decode_only`` the decode alone,
comparable with the text check's generation MFU. ``model_flops_per_s`` is the numerator (the
policy's, for DPO); on the CPU (the ``--smoke --vlm`` run) there is no peak and every MFU is null.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from bench.gpu_check import StepClock, device_header

# --smoke --vlm: every size differs from build_tiny_vlm's defaults, so that --plan at these sizes
# (tests/bench/test_gpu_check_vlm.py compares it with this run's built model) checks each mapping.
SMOKE = ["--vlm-hidden", "48", "--vlm-layers", "2", "--vlm-heads", "4",
         "--vlm-intermediate", "96", "--vision-hidden", "32", "--vision-layers", "2",
         "--image-size", "36", "--patch", "6", "--vlm-max-positions", "200"]  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("vision-language model (--vlm; defaults: ~0.5B parameters)")
    group.add_argument(
        "--vlm",
        action="store_true",
        help="measure the vision-language model (vision DPO, generation with images) instead "
        "of the text one; each run writes its own JSON",
    )
    sizes = [
        ("--vlm-hidden", 1024, "language model hidden size"),
        ("--vlm-layers", 24, "language model blocks"),
        ("--vlm-heads", 16, "attention heads, tower and language model alike"),
        ("--vlm-intermediate", 4096, "language model MLP width"),
        ("--vision-hidden", 768, "image tower width (its MLP is twice as wide)"),
        ("--vision-layers", 12, "image tower blocks"),
        ("--image-size", 336, "image side in pixels"),
        ("--patch", 14, "patch side in pixels: (image-size/patch)² image tokens"),
        ("--vlm-max-positions", 2048, "longest sequence, image tokens included"),
    ]
    for flag, default, text in sizes:
        group.add_argument(flag, type=int, default=default, help=f"{text} (default: %(default)s)")
    group.add_argument(
        "--vllm-memory",
        type=float,
        default=0.5,
        help="vLLM's gpu_memory_utilization (default: %(default)s)",
    )


def build_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``build_tiny_vlm``'s size arguments from the command line."""
    return {
        "hidden_size": args.vlm_hidden,
        "layers": args.vlm_layers,
        "heads": args.vlm_heads,
        "intermediate": args.vlm_intermediate,
        "vision_hidden_size": args.vision_hidden,
        "vision_layers": args.vision_layers,
        "image_size": args.image_size,
        "patch": args.patch,
        "max_positions": args.vlm_max_positions,
    }


def parameter_split(model: Any) -> dict[str, int]:
    """Parameters by part: the tower, the projector, the language model, and N_lm of the
    module docstring (``lm_flops``: the language model less its input embedding table)."""
    from training.vision import image_encoder

    def count(module: Any) -> int:
        return sum(p.numel() for p in module.parameters())

    total = count(model)
    vision = count(image_encoder(model))
    projector = count(model.model.multi_modal_projector)
    embedding = model.get_input_embeddings().weight
    tied = model.get_output_embeddings().weight is embedding
    language = total - vision - projector
    # A tied head shares the table's tensor (counted once in `total`) but still multiplies.
    lm_flops = language - embedding.numel() + (embedding.numel() if tied else 0)
    return {
        "total": total,
        "vision": vision,
        "projector": projector,
        "language": language,
        "lm_flops": lm_flops,
    }


def plan(args: argparse.Namespace) -> dict[str, Any]:
    """Parameter counts at the requested sizes without building the weights.

    A default-size model is built for real (seconds: its tokenizer and config are the real
    builder's), its config scaled to the requested sizes as ``build_tiny_vlm`` maps them, and the
    model instantiated on the meta device.
    """
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from training.vision import build_tiny_vlm

    with tempfile.TemporaryDirectory(prefix="tandem-gpu-check-plan-") as scratch:
        config = LlavaConfig.from_pretrained(str(build_tiny_vlm(Path(scratch) / "tiny")))
    vision = {
        "hidden_size": args.vision_hidden,
        "projection_dim": args.vision_hidden,
        "intermediate_size": 2 * args.vision_hidden,
        "num_hidden_layers": args.vision_layers,
        "num_attention_heads": args.vlm_heads,
        "image_size": args.image_size,
        "patch_size": args.patch,
    }
    text = {
        "hidden_size": args.vlm_hidden,
        "intermediate_size": args.vlm_intermediate,
        "num_hidden_layers": args.vlm_layers,
        "num_attention_heads": args.vlm_heads,
        "num_key_value_heads": args.vlm_heads,
        "max_position_embeddings": args.vlm_max_positions,
    }
    # Rebuilt from dicts, not edited in place: a config derives fields at init (Llama's head_dim).
    for name, sizes in (("vision_config", vision), ("text_config", text)):
        old = getattr(config, name)
        fields = {k: v for k, v in old.to_dict().items() if k != "head_dim"} | sizes
        setattr(config, name, type(old).from_dict(fields))
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    return {"params": parameter_split(model), "image": image_shape(args)}


def image_shape(args: argparse.Namespace) -> dict[str, int]:
    tokens = (args.image_size // args.patch) ** 2
    return {"size": args.image_size, "patch": args.patch, "tokens": tokens, "positions": tokens + 1}


def train_flops(n: dict[str, int], image: dict[str, int], text: float, images: float) -> dict:
    """FLOPs of one DPO pair whose two sequences hold ``text`` + ``images`` tokens in all (module
    docstring): ``policy`` forward and backward, ``reference`` forward."""
    forwards = images / image["tokens"]  # tower passes: one per image placeholder in a sequence
    tower = 2 * n["vision"] * image["positions"] * forwards
    return {
        "policy": 6 * n["lm_flops"] * (text + images) + 6 * n["projector"] * images + tower,
        "reference": 2 * n["lm_flops"] * (text + images) + 2 * n["projector"] * images + tower,
    }


def prefill_flops(n: dict[str, int], image: dict[str, int], text: float, images: float) -> float:
    """FLOPs of one prompt's prefill with ``text`` + ``images`` tokens (module docstring)."""
    tower = 2 * n["vision"] * image["positions"] * images / image["tokens"]
    return 2 * n["lm_flops"] * (text + images) + 2 * n["projector"] * images + tower


def _words(sentences: list[str], n: int) -> str:
    """The first ``n`` words of ``sentences`` said over and over (a reply of a chosen length)."""
    words = " ".join(sentences).split()
    return " ".join((words * (n // len(words) + 1))[:n])


def workload(args: argparse.Namespace, pairs: int) -> tuple[list[dict], dict[str, Any], list]:
    """``pairs`` vision_pairs rows (an image of a scene, one of its questions, its captions
    chosen and another scene's rejected), their images by path, and ``--gen-prompts`` prompts."""
    from training import scenes
    from training.vision_generation import VisionPrompt

    rng = random.Random(1)
    rows, images = [], {}
    for i in range(pairs):
        scene, other = scenes.random_scene(rng), scenes.random_scene(rng)
        path = f"images/{i}.png"
        images[path] = scenes.draw(scene, size=args.image_size)
        question = rng.choice(scenes.questions(scene)).text
        rows.append(
            {
                "images": [path],
                "prompt": [
                    {
                        "role": "user",
                        "content": [{"type": "image"}, {"type": "text", "text": question}],
                    }
                ],
                "chosen": [
                    {
                        "role": "assistant",
                        "content": _words(scenes.captions(scene), args.reply_words),
                    }
                ],
                "rejected": [
                    {
                        "role": "assistant",
                        "content": _words(scenes.captions(other), args.reply_words),
                    }
                ],
            }
        )
    prompts = []
    for _ in range(args.gen_prompts):
        scene = scenes.random_scene(rng)
        question = rng.choice(scenes.questions(scene)).text
        prompts.append(
            VisionPrompt(
                messages=[{"role": "user", "content": question}],
                images=[scenes.draw(scene, size=args.image_size)],
            )
        )
    return rows, images, prompts


def pair_tokens(
    processor: Any, rows: list[dict], images: dict[str, Any], max_length: int
) -> tuple[float, float]:
    """Mean (text, image) tokens per pair, both sequences, as TRL's own collator builds them."""
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    collate = DataCollatorForVisionPreference(processor=processor, max_length=max_length)
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    text = image = 0
    for row in rows:  # one at a time: a batch would count its padding
        batch = collate([{**row, "images": [images[p] for p in row["images"]]}])
        real = batch["attention_mask"].bool()
        n_image = int(((batch["input_ids"] == image_id) & real).sum())
        image += n_image
        text += int(real.sum()) - n_image
    return text / len(rows), image / len(rows)


def prompt_tokens(processor: Any, prompts: list) -> tuple[float, float]:
    """Mean (text, image) tokens of the prompts' prefill."""
    from training.vision_generation import vision_messages

    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    text = image = 0
    for prompt in prompts:
        rendered = processor.apply_chat_template(
            vision_messages(prompt), tokenize=False, add_generation_prompt=True
        )
        ids = processor(images=prompt.images, text=[rendered], add_special_tokens=False)
        n_image = sum(t == image_id for t in ids["input_ids"][0])
        image += n_image
        text += len(ids["input_ids"][0]) - n_image
    return text / len(prompts), image / len(prompts)


def _sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def _free(cuda: bool) -> None:
    """Give back the memory of models that are gone: vLLM sizes its cache from what is free."""
    gc.collect()
    if cuda:
        import torch

        torch.cuda.empty_cache()


def timed_generation(generator: Any, prompts: list, config: Any, cuda: bool) -> tuple[list, float]:
    """Warm up on one batch (kernels, allocator, vLLM's graphs), then time all the prompts."""
    generator.generate(prompts[: config.batch_size], config)
    _sync(cuda)
    started = time.perf_counter()
    outputs = generator.generate(prompts, config)
    _sync(cuda)
    return outputs, time.perf_counter() - started


def measure(args: argparse.Namespace, cuda: bool) -> dict[str, Any]:
    """The whole VLM check on the GPU (bf16), or on the CPU in fp32 for the smoke run."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from training.dpo import DPOConfig
    from training.generation import GenerationConfig
    from training.vision import build_tiny_vlm
    from training.vision_dpo import train_vision_dpo
    from training.vision_generation import make_vision_generator

    result = device_header(args, cuda)
    peak = result["peak_bf16_flops"]
    device = "cuda" if cuda else "cpu"

    def mfu(flops_per_s: float) -> float | None:
        return round(flops_per_s / peak, 4) if peak else None

    with tempfile.TemporaryDirectory(prefix="tandem-gpu-check-vlm-") as scratch:
        work = Path(scratch)
        model_path = build_tiny_vlm(work / "model", **build_kwargs(args))
        n = parameter_split(AutoModelForImageTextToText.from_pretrained(str(model_path)))
        image = image_shape(args)
        result |= {"params": n, "image": image}
        processor = AutoProcessor.from_pretrained(str(model_path))
        rows, images, prompts = workload(args, args.batch * (args.steps + 2))
        text, image_tokens = pair_tokens(processor, rows, images, args.vlm_max_positions)
        result["tokens_per_pair"] = {"text": round(text, 1), "image": round(image_tokens, 1)}

        clock = StepClock()
        train_vision_dpo(
            rows,
            DPOConfig(
                learning_rate=1e-6,
                max_steps=args.steps,
                batch_size=args.batch,
                max_length=args.vlm_max_positions,
                precision="bf16" if cuda else "fp32",
                device=device,
                warmup_ratio=0.0,
                logging_steps=args.steps,
            ),  # fmt: skip
            images=images.__getitem__,
            policy_ref=model_path,
            reference_ref=model_path,
            root=work,
            name="vision-dpo",
            progress=clock,
        )
        pairs_per_s = clock.steps_per_second(args.warmup) * args.batch
        flops = train_flops(n, image, text, image_tokens)
        images_per_pair = sum(len(row["images"]) for row in rows) / len(rows)
        result["vision_dpo"] = {
            "steps_per_s": round(pairs_per_s / args.batch, 3),
            "pairs_per_s": round(pairs_per_s, 2),
            "tokens_per_s": round(pairs_per_s * (text + image_tokens)),
            "text_tokens_per_s": round(pairs_per_s * text),
            "image_tokens_per_s": round(pairs_per_s * image_tokens),
            "images_per_s": round(pairs_per_s * images_per_pair, 2),
            "model_flops_per_s": round(pairs_per_s * flops["policy"]),
            "mfu": mfu(pairs_per_s * flops["policy"]),
            "mfu_with_reference": mfu(pairs_per_s * (flops["policy"] + flops["reference"])),
        }
        print(f"vision DPO: {result['vision_dpo']}", flush=True)
        _free(cuda)  # the policy, the reference and their optimizer state

        config = GenerationConfig(
            k=args.k, max_new_tokens=args.max_new_tokens, batch_size=args.gen_batch, temperature=1.0
        )
        prompt_text, prompt_image = prompt_tokens(processor, prompts)
        result["tokens_per_prompt"] = {
            "text": round(prompt_text, 1),
            "image": round(prompt_image, 1),
        }
        prefill = prefill_flops(n, image, prompt_text, prompt_image)

        def rates(outputs: list[list[str]], seconds: float) -> dict[str, Any]:
            # Each completion re-tokenized, +1 for the EOS that decoding drops when it was emitted.
            generated = sum(
                len(processor.tokenizer(t, add_special_tokens=False)["input_ids"]) + 1
                for group in outputs
                for t in group
            )
            decode = 2 * n["lm_flops"] * generated
            work = decode + prefill * len(outputs)
            return {
                "tokens_per_s": round(generated / seconds),
                "completions": sum(len(g) for g in outputs),
                "prompts_per_s": round(len(outputs) / seconds, 2),
                "model_flops_per_s": round(work / seconds),
                "mfu": mfu(work / seconds),
                "mfu_decode_only": mfu(decode / seconds),
            }

        generator: Any = make_vision_generator("transformers", model_path, device=device)
        outputs, seconds = timed_generation(generator, prompts, config, cuda)
        generation = {"transformers": rates(outputs, seconds)}
        print(f"generation (transformers): {generation['transformers']}", flush=True)
        del generator
        _free(cuda)
        generation["vllm"] = vllm_rates(args, model_path, prompts, config, cuda, rates)
        print(f"generation (vLLM): {generation['vllm']}", flush=True)
        result["vision_generation"] = generation
    return result


def vllm_rates(
    args: argparse.Namespace, model_path: Path, prompts: list, config: Any, cuda: bool, rates: Any
) -> dict[str, Any]:
    """vLLM's figures, or why there are none: not installed, no CUDA, or the error it raised."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        return {"skipped": "vLLM not installed"}
    if not cuda:
        return {"skipped": "no CUDA"}
    from training.vision_generation import make_vision_generator

    try:
        generator = make_vision_generator(
            "vllm",
            model_path,
            dtype="bfloat16",
            gpu_memory_utilization=args.vllm_memory,
            max_model_len=args.vlm_max_positions,
            limit_mm_per_prompt={"image": 1},
        )
        return rates(*timed_generation(generator, prompts, config, cuda))
    except Exception as exc:
        # The DPO and transformers figures are minutes of GPU time: keep them and say why vLLM
        # has none, rather than lose the run (vLLM's model and processor support moves fast).
        traceback.print_exc(file=sys.stderr)
        return {"error": f"{type(exc).__name__}: {exc}"}
