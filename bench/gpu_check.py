"""GPU throughput check: reward-model training, DPO training and generation on a ~0.5B Llama.

For a GPU worker host (DESIGN.md: the ``gpu`` queue). Nothing is downloaded:
the model is a Llama-style network built from a config (random weights; the
speed of a step does not depend on the values) and the tokenizer is trained
locally by ``training.models.build_tokenizer``. Each measurement runs the
library's own entry point, so the numbers include its real overheads:

- reward: ``training.reward.train_reward_model`` (TRL ``RewardTrainer``, bf16);
- DPO: ``training.policy.train_dpo`` (TRL ``DPOTrainer``, bf16, reference model on the card);
- generation: ``training.generation.TransformersGenerator`` (bf16, K samples per prompt).

Throughput is measured between optimizer steps after ``--warmup`` steps
(or over a second, timed generation call). Model FLOPs utilisation (MFU,
Chowdhery et al. 2022, PaLM, App. B) counts 6·N FLOPs per trained token
and 2·N per generated token, N = non-embedding parameters; DPO's reference
forward (another 2·N) is reported separately as ``mfu_with_reference``.

``--vlm`` measures a ~0.5B vision-language model instead (vision DPO, generation with images
through transformers and vLLM): ``bench.gpu_check_vlm``, whose docstring gives its FLOPs.

Run: ``python -m bench.gpu_check --json bench/out/gpu_check.json`` and
``python -m bench.gpu_check --vlm --json bench/out/gpu_check_vlm.json``; ``--plan`` (with or
without ``--vlm``) prints the model size without a GPU.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Dense bf16 tensor-core peaks from the vendors' datasheets, in FLOP/s.
PEAK_BF16 = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
}


def peak_flops(device_name: str) -> tuple[str | None, float | None]:
    """Map ``torch.cuda.get_device_name()`` (e.g. "NVIDIA H100 80GB HBM3") to a row of ``PEAK_BF16``."""
    name = device_name.upper()
    if "H200" in name:
        return "H200", PEAK_BF16["H200"]
    if "H100" in name:
        # The SXM part reports only its memory ("80GB HBM3"); the others say what they are.
        key = "H100 PCIe" if "PCIE" in name else "H100 NVL" if "NVL" in name else "H100 SXM"
        return key, PEAK_BF16[key]
    for key in ("A100", "L40S", "L4"):
        if key in name:
            return key, PEAK_BF16[key]
    return None, None


def device_header(args: argparse.Namespace, cuda: bool) -> dict[str, Any]:
    """The card, its bf16 peak (``--peak-tflops`` for an unlisted one) and where that came from;
    on the CPU no peak, so no MFU."""
    if not cuda:
        return {"device": "cpu", "peak_bf16_flops": None, "peak_source": None}
    import torch

    device_name = torch.cuda.get_device_name()
    card, peak = peak_flops(device_name)
    if args.peak_tflops:
        card, peak = f"{device_name} (given)", args.peak_tflops * 1e12
    return {"device": device_name, "peak_bf16_flops": peak, "peak_source": card}


WORDS = (
    "the a river mountain light stone quiet green small large old new open road city field song bread "
    "apple chair door window paper blue slow quick warm bright kind gentle golden wide narrow tall"
).split()


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choices(WORDS, k=words))


def build_model(work: Path, args: argparse.Namespace, device: str) -> tuple[Path, int, int]:
    """Save a random ~0.5B Llama + tokenizer to ``work/model``; return (path, params, non-embedding params)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from training.models import build_tokenizer

    rng = random.Random(0)
    path = work / "model"
    tokenizer = build_tokenizer(
        [text(rng, 64) for _ in range(200)], vocab_size=args.vocab, model_max_length=4096, path=path
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        intermediate_size=args.intermediate,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    with torch.device(device):
        model = LlamaForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())
    non_embedding = total - model.get_input_embeddings().weight.numel()
    if device != "meta":
        model.save_pretrained(str(path))
    return path, total, non_embedding


class StepClock:
    """A ``ProgressCallback`` that timestamps optimizer steps."""

    def __init__(self) -> None:
        self.times: dict[int, float] = {}

    def __call__(self, progress: Any) -> None:
        import torch

        if torch.cuda.is_available():  # the VLM smoke run times CPU steps with this clock too
            torch.cuda.synchronize()
        self.times.setdefault(progress.step, time.perf_counter())

    def steps_per_second(self, warmup: int) -> float:
        steps = sorted(s for s in self.times if s >= warmup)
        if len(steps) < 2:
            raise RuntimeError("too few steps after warm-up; raise --steps")
        return (steps[-1] - steps[0]) / (self.times[steps[-1]] - self.times[steps[0]])


def sequence_tokens(tokenizer: Any, prompt: list[dict[str, str]], reply: str) -> int:
    from training.data import render_messages

    return len(
        tokenizer(render_messages(tokenizer, prompt, reply), add_special_tokens=False)["input_ids"]
    )


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from training.data import PreferencePair
    from training.generation import GenerationConfig, TransformersGenerator
    from training.models import load_tokenizer
    from training.policy import DPOConfig, train_dpo
    from training.reward import RewardConfig, train_reward_model

    result = device_header(args, cuda=True)
    peak = result["peak_bf16_flops"]
    rng = random.Random(1)
    with tempfile.TemporaryDirectory(prefix="tandem-gpu-check-") as scratch:
        work = Path(scratch)
        model_path, total, n = build_model(work, args, "cpu")
        result["params"], result["non_embedding_params"] = total, n
        tokenizer = load_tokenizer(model_path)
        pairs = [
            PreferencePair(
                prompt=[{"role": "user", "content": text(rng, args.prompt_words)}],
                chosen=[{"role": "assistant", "content": text(rng, args.reply_words)}],
                rejected=[{"role": "assistant", "content": text(rng, args.reply_words)}],
            )
            for _ in range(args.batch * (args.steps + 2))
        ]
        tokens_per_pair = sum(
            sequence_tokens(tokenizer, p.prompt, p.chosen[0]["content"])
            + sequence_tokens(tokenizer, p.prompt, p.rejected[0]["content"])
            for p in pairs
        ) / len(pairs)
        result["tokens_per_pair"] = round(tokens_per_pair, 1)

        def rates(steps_per_second: float, flops_per_token: float) -> dict[str, Any]:
            tokens = steps_per_second * args.batch * tokens_per_pair
            out = {"tokens_per_s": round(tokens), "steps_per_s": round(steps_per_second, 3)}
            out["mfu"] = round(flops_per_token * n * tokens / peak, 4) if peak else None
            return out

        clock = StepClock()
        train_reward_model(
            pairs,
            RewardConfig(
                backbone=str(model_path),
                max_steps=args.steps,
                batch_size=args.batch,
                max_length=4096,
                bf16=True,
                learning_rate=1e-5,
                logging_steps=args.steps,
            ),  # fmt: skip
            output_dir=work / "reward",
            progress=clock,
        )
        result["reward"] = rates(clock.steps_per_second(args.warmup), 6)
        print(f"reward: {result['reward']}", flush=True)

        clock = StepClock()
        train_dpo(
            pairs,
            DPOConfig(
                learning_rate=1e-6,
                max_steps=args.steps,
                batch_size=args.batch,
                max_length=4096,
                precision="bf16",
                warmup_ratio=0.0,
                logging_steps=args.steps,
            ),  # fmt: skip
            policy_ref=model_path,
            reference_ref=model_path,
            root=work,
            name="dpo",
            progress=clock,
        )
        dpo = rates(clock.steps_per_second(args.warmup), 6)
        dpo["mfu_with_reference"] = round(dpo["mfu"] * 8 / 6, 4) if dpo["mfu"] is not None else None
        result["dpo"] = dpo
        print(f"dpo: {result['dpo']}", flush=True)

        generator = TransformersGenerator(model_path, device="cuda")
        prompts = [
            [{"role": "user", "content": text(rng, args.prompt_words)}]
            for _ in range(args.gen_prompts)
        ]
        config = GenerationConfig(
            k=args.k, max_new_tokens=args.max_new_tokens, batch_size=args.gen_batch, temperature=1.0
        )
        generator.generate(prompts[: args.gen_batch], config)  # warm-up: kernels, allocator
        torch.cuda.synchronize()
        started = time.perf_counter()
        outputs = generator.generate(prompts, config)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        # Each completion is re-tokenized (+1 for the EOS that decoding drops when it was emitted).
        generated = sum(
            len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for g in outputs for t in g
        )
        tokens_per_s = generated / seconds
        result["generation"] = {
            "tokens_per_s": round(tokens_per_s),
            "completions": sum(len(g) for g in outputs),
            "mfu": round(2 * n * tokens_per_s / peak, 4) if peak else None,
        }
        print(f"generation: {result['generation']}", flush=True)
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from bench import gpu_check_vlm

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_argument_group("model (defaults: ~0.5B parameters)")
    size.add_argument("--hidden", type=int, default=1152, help="hidden size (default: %(default)s)")
    size.add_argument(
        "--layers", type=int, default=24, help="transformer blocks (default: %(default)s)"
    )
    size.add_argument(
        "--heads", type=int, default=16, help="attention heads (default: %(default)s)"
    )
    size.add_argument(
        "--kv-heads", type=int, default=16, help="key/value heads (default: %(default)s)"
    )
    size.add_argument(
        "--intermediate", type=int, default=4608, help="MLP width (default: %(default)s)"
    )
    size.add_argument(
        "--vocab", type=int, default=8000, help="tokenizer vocabulary bound (default: %(default)s)"
    )
    work = parser.add_argument_group("workload")
    work.add_argument(
        "--batch", type=int, default=8, help="pairs per training step (default: %(default)s)"
    )
    work.add_argument(
        "--steps", type=int, default=20, help="training steps per trainer (default: %(default)s)"
    )
    work.add_argument(
        "--warmup", type=int, default=5, help="steps excluded from timing (default: %(default)s)"
    )
    work.add_argument(
        "--prompt-words", type=int, default=200, help="words per prompt (default: %(default)s)"
    )
    work.add_argument(
        "--reply-words", type=int, default=200, help="words per reply (default: %(default)s)"
    )
    work.add_argument(
        "--gen-prompts", type=int, default=64, help="prompts to generate for (default: %(default)s)"
    )
    work.add_argument(
        "--gen-batch", type=int, default=16, help="prompts per generate call (default: %(default)s)"
    )
    work.add_argument("--k", type=int, default=4, help="samples per prompt (default: %(default)s)")
    work.add_argument(
        "--max-new-tokens", type=int, default=256, help="tokens per sample (default: %(default)s)"
    )
    gpu_check_vlm.add_arguments(parser)
    parser.add_argument(
        "--peak-tflops", type=float, help="bf16 dense peak of an unlisted card, in TFLOP/s"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--plan", action="store_true", help="print the model size and exit (no GPU needed)"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a tiny model for seconds (" + " ".join(SMOKE + gpu_check_vlm.SMOKE) + "); "
        "without CUDA the text check prints 'skipped: no CUDA' and exits 0, so the test suite "
        "can run it anywhere, and --smoke --vlm runs the whole VLM check on the CPU",
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--smoke" in argv:
        argv = SMOKE + gpu_check_vlm.SMOKE + argv
    args = parser.parse_args(argv)
    args.argv = argv
    if args.warmup >= args.steps - 1:
        parser.error("--warmup must leave at least two timed steps")
    return args


SMOKE = ["--hidden", "64", "--layers", "2", "--heads", "4", "--kv-heads", "4",
         "--intermediate", "128", "--vocab", "1000", "--batch", "2", "--steps", "4",
         "--warmup", "1", "--prompt-words", "16", "--reply-words", "16", "--gen-prompts", "4",
         "--gen-batch", "2", "--k", "2", "--max-new-tokens", "8"]  # fmt: skip


def smoke(args: argparse.Namespace, cuda: bool) -> int:
    """--smoke: the tiny run on a GPU, or an explicit skip without one (the VLM check runs on
    the CPU too); JSON with provenance."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench import common, gpu_check_vlm

    with common.RunMeter() as meter:
        if args.vlm:
            figures = gpu_check_vlm.measure(args, cuda)
        else:
            figures = measure(args) if cuda else {"skipped": "no CUDA"}
    if not cuda and not args.vlm:
        print("skipped: no CUDA (torch.cuda.is_available() is False)")
    else:
        print(json.dumps(figures, indent=2))
    common.record(
        "gpu_check", args.argv, meter, figures, json_path=args.json, save=False, smoke=True
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.smoke:
        return smoke(args, torch.cuda.is_available())

    if args.plan and args.vlm:
        from bench import gpu_check_vlm

        print(json.dumps(gpu_check_vlm.plan(args)))
        return 0
    if args.plan:
        with tempfile.TemporaryDirectory() as scratch:
            _, total, n = build_model(Path(scratch), args, "meta")
        print(json.dumps({"params": total, "non_embedding_params": n}))
        return 0
    if not torch.cuda.is_available():
        print(
            "gpu_check needs a CUDA GPU and torch.cuda.is_available() is False on this machine; "
            "run it on a gpu worker host (use --plan to see the model size here; --smoke --vlm "
            "runs the tiny vision-language check on the CPU).",
            file=sys.stderr,
        )
        return 2
    from bench import common, gpu_check_vlm

    with common.RunMeter() as meter:
        result = gpu_check_vlm.measure(args, cuda=True) if args.vlm else measure(args)
    print(json.dumps(result, indent=2))
    # A GPU's figures are cited later: they carry the commit, command and machine (bench.provenance).
    common.record(
        "gpu_check", args.argv, meter, result, json_path=args.json, save=False, smoke=False
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
