"""bench.gpu_check --vlm: the vision-language check runs end to end on the CPU (``--smoke --vlm``),
its figures hang together by the FLOPs of ``bench.gpu_check_vlm``'s docstring, ``--plan`` counts
exactly the model a run builds, and the default sizes make a ~0.5B model."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import gpu_check, gpu_check_vlm

REPO = Path(__file__).resolve().parents[2]


def test_flops_by_hand() -> None:
    n = {"vision": 10, "projector": 3, "lm_flops": 100}
    image = {"tokens": 4, "positions": 5}
    # A pair: 20 text tokens and the 4-token image in each of its two sequences (8 image tokens).
    flops = gpu_check_vlm.train_flops(n, image, text=20, images=8)
    # 6·100·(20+8) + 6·3·8 + two tower passes of 2·10·5; the reference 2·… instead of 6·…
    assert flops == {"policy": 16800 + 144 + 200, "reference": 5600 + 48 + 200}
    # A prompt: 7 text tokens and one image, prefilled once.
    assert gpu_check_vlm.prefill_flops(n, image, text=7, images=4) == 2200 + 24 + 100


def _plan(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    assert gpu_check.main(["--plan", "--vlm", *argv]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.slow
def test_plan_default_sizes_are_half_a_billion(capsys: pytest.CaptureFixture[str]) -> None:
    plan = _plan([], capsys)
    params = plan["params"]
    assert 0.4e9 < params["total"] < 0.6e9
    assert 40e6 < params["vision"] < 100e6  # ViT-B-like
    assert 0.35e9 < params["language"] < 0.45e9
    assert params["vision"] + params["projector"] + params["language"] == params["total"]
    assert plan["image"] == {"size": 336, "patch": 14, "tokens": 576, "positions": 577}


@pytest.mark.slow
def test_vlm_smoke_runs_on_the_cpu_and_plan_counts_its_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "gpu_check_vlm.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--smoke", "--vlm", "--json", str(out)],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert data["bench"] == "gpu_check" and data["smoke"] is True
    assert data["commit"]["sha"] == head.stdout.strip()
    assert "--vlm" in data["argv"]

    params, image = data["params"], data["image"]
    # --plan at the smoke sizes predicts the model the run built, part by part.
    assert _plan(gpu_check_vlm.SMOKE, capsys) == {"params": params, "image": image}
    assert image == {"size": 36, "patch": 6, "tokens": 36, "positions": 37}
    text, image_tokens = data["tokens_per_pair"]["text"], data["tokens_per_pair"]["image"]
    assert image_tokens == 2 * image["tokens"], "the image sits in the chosen and the rejected"
    assert text > 0

    dpo = data["vision_dpo"]
    assert dpo["steps_per_s"] > 0
    assert dpo["tokens_per_s"] == pytest.approx(
        dpo["text_tokens_per_s"] + dpo["image_tokens_per_s"], abs=1
    )
    assert dpo["image_tokens_per_s"] == pytest.approx(dpo["pairs_per_s"] * image_tokens, rel=1e-3)
    assert dpo["images_per_s"] == pytest.approx(dpo["pairs_per_s"], rel=1e-3)  # one per pair
    policy = gpu_check_vlm.train_flops(params, image, text, image_tokens)["policy"]
    assert dpo["model_flops_per_s"] == pytest.approx(dpo["pairs_per_s"] * policy, rel=1e-2)

    generation = data["vision_generation"]
    transformers = generation["transformers"]
    assert transformers["completions"] == 4 * 2  # --gen-prompts 4, --k 2
    assert transformers["tokens_per_s"] > 0 and transformers["model_flops_per_s"] > 0
    assert data["tokens_per_prompt"]["image"] == image["tokens"]
    if importlib.util.find_spec("vllm") is None:
        assert generation["vllm"] == {"skipped": "vLLM not installed"}

    if data["peak_bf16_flops"] is None:  # the CPU: nothing to divide by
        assert data["device"] == "cpu"
        assert dpo["mfu"] is None and transformers["mfu"] is None
    else:
        assert dpo["mfu"] == pytest.approx(
            dpo["model_flops_per_s"] / data["peak_bf16_flops"], abs=1e-4
        )
        assert dpo["mfu_with_reference"] > dpo["mfu"]
