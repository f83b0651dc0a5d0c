"""Policy training learns on tiny models: DPO (sigmoid, IPO, LoRA), KTO, and RLOO with the ensemble reward."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.training.conftest_policy import (
    synthetic_pairs,
    synthetic_unpaired,
    tiny_policy_dir,  # noqa: F401  (fixture)
)
from training.artifacts import Progress, read_manifest
from training.data import PreferencePair
from training.policy import (
    DPOConfig,
    KTOConfig,
    OnPolicyConfig,
    completion_logprobs,
    ensemble_reward_function,
    train_dpo,
    train_kto,
    train_on_policy,
)
from training.reward import EnsembleScores

HELD_OUT = synthetic_pairs(16, seed=99)


def logprob_margin(model_dir: Path, pairs: list[PreferencePair]) -> float:
    """Mean log π(chosen) − log π(rejected) over ``pairs``: what DPO should raise."""
    prompts = [p.prompt for p in pairs]
    chosen = completion_logprobs(model_dir, prompts, [p.chosen for p in pairs])
    rejected = completion_logprobs(model_dir, prompts, [p.rejected for p in pairs])
    return float(np.mean(chosen - rejected))


def weights(model_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


@pytest.mark.parametrize(("loss", "beta"), [("sigmoid", 0.1), ("ipo", 0.5)])
def test_dpo_loss_falls_and_held_out_margin_rises(
    tiny_policy_dir: Path,  # noqa: F811
    tmp_path: Path,
    loss: str,
    beta: float,
) -> None:
    config = DPOConfig(
        loss=loss,  # type: ignore[arg-type]
        beta=beta,
        learning_rate=2e-3,
        max_steps=16,
        batch_size=8,
        max_length=64,
        warmup_ratio=0.0,
    )
    reports: list[Progress] = []
    result = train_dpo(
        synthetic_pairs(64, seed=0),
        config,
        policy_ref=tiny_policy_dir,
        reference_ref=tiny_policy_dir,
        root=tmp_path,
        name="round-1",
        eval_pairs=HELD_OUT,
        progress=reports.append,
        data_cursor="c-7",
    )
    metrics = result.metrics
    assert metrics["steps"] == 16
    assert metrics["loss_final"] < metrics["loss_first"]
    # TRL's implicit-reward metrics and its held-out evaluation are reported.
    assert metrics["eval_rewards/accuracies"] > 0.9
    assert metrics["eval_rewards/margins"] > 0
    assert logprob_margin(result.path, HELD_OUT) > logprob_margin(tiny_policy_dir, HELD_OUT) + 0.5
    manifest = read_manifest(result.path)
    assert manifest.kind == "policy-dpo" and manifest.data_cursor == "c-7"
    assert manifest.config["loss"] == loss and manifest.config["reference_ref"] == str(
        tiny_policy_dir
    )
    assert reports and reports[-1].step == 16 and reports[-1].stage == "dpo"


def test_lora_dpo_trains_adapters_only_and_warm_starts_against_a_fixed_reference(
    tiny_policy_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    config = DPOConfig(
        learning_rate=1e-2, max_steps=12, batch_size=8, max_length=64, lora=True, lora_r=4, lora_alpha=8,
        lora_target_modules="q_proj,v_proj,up_proj,down_proj", warmup_ratio=0.0,
    )  # fmt: skip
    first = train_dpo(
        synthetic_pairs(48, seed=0), config, policy_ref=tiny_policy_dir, reference_ref=tiny_policy_dir,
        root=tmp_path, name="lora-1",
    )  # fmt: skip
    assert (first.path / "adapter" / "adapter_config.json").is_file()
    base, merged = weights(tiny_policy_dir), weights(first.path)
    assert set(merged) == set(base)  # published merged: a plain checkpoint
    changed = {name for name in base if not np.allclose(base[name].numpy(), merged[name].numpy())}
    assert changed and all(
        any(m in name for m in ("q_proj", "v_proj", "up_proj", "down_proj")) for name in changed
    )
    assert logprob_margin(first.path, HELD_OUT) > logprob_margin(tiny_policy_dir, HELD_OUT)

    # Round 2 starts from the merged round-1 policy; the reference stays π_0.
    second = train_dpo(
        synthetic_pairs(48, seed=1), config, policy_ref=first.path, reference_ref=tiny_policy_dir,
        root=tmp_path, name="lora-2", parent="lora-1",
    )  # fmt: skip
    # Against π_0, the warm-started policy already prefers chosen: DPO's
    # implicit reward accuracy starts high instead of at chance.
    assert second.metrics["rewards/accuracies"] > 0.9
    assert read_manifest(second.path).parent == "lora-1"


def test_kto_loss_falls(tiny_policy_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    config = KTOConfig(
        learning_rate=2e-3, max_steps=16, batch_size=8, max_length=64, warmup_ratio=0.0
    )
    result = train_kto(
        synthetic_unpaired(64, seed=0), config, policy_ref=tiny_policy_dir, reference_ref=tiny_policy_dir,
        root=tmp_path, name="kto",
    )  # fmt: skip
    assert result.metrics["loss_final"] < result.metrics["loss_first"]
    assert result.metrics["rewards/margins"] > 0
    assert read_manifest(result.path).kind == "policy-kto"


def test_kto_refuses_one_sided_labels(tiny_policy_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    only_good = [e for e in synthetic_unpaired(8, seed=0) if e.label]
    with pytest.raises(ValueError, match="both desirable"):
        train_kto(only_good, KTOConfig(), policy_ref=tiny_policy_dir, reference_ref=tiny_policy_dir,
                  root=tmp_path, name="x")  # fmt: skip
    assert not (tmp_path / "x").exists()


class HandEnsemble:
    """Two members with known rewards: member 0 = length/10, member 1 = length/10 − 1."""

    def score(self, prompts: list[Any], completions: list[Any]) -> EnsembleScores:
        lengths = np.array(
            [len(c[0]["content"] if isinstance(c, list) else c) / 10 for c in completions]
        )
        return EnsembleScores(np.stack([lengths, lengths - 1.0]))


def test_ensemble_reward_function_aggregates_by_hand() -> None:
    completions = [
        [{"role": "assistant", "content": "x" * 10}],
        [{"role": "assistant", "content": "x" * 30}],
    ]
    prompts = [[{"role": "user", "content": "q"}]] * 2
    # Members [[1, 3], [0, 2]]: mean [0.5, 2.5], min [0, 2], std 0.5 each.
    assert ensemble_reward_function(HandEnsemble(), "mean")(prompts, completions) == [0.5, 2.5]
    assert ensemble_reward_function(HandEnsemble(), "worst")(prompts, completions) == [0.0, 2.0]
    uwo = ensemble_reward_function(HandEnsemble(), "uncertainty_weighted", lam=2.0)(
        prompts, completions
    )
    assert uwo == pytest.approx([-0.5, 1.5])
    with pytest.raises(ValueError):
        ensemble_reward_function(HandEnsemble(), "median")  # type: ignore[arg-type]


def test_rloo_runs_against_a_trained_reward_ensemble(tiny_policy_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    from training.reward import EnsembleConfig, RewardConfig, RewardEnsemble, train_reward_ensemble

    # The ensemble is fitted on the policy's own tokenizer/backbone family:
    # two tiny members that learn "yes" over "no".
    fitted = train_reward_ensemble(
        synthetic_pairs(32, seed=0),
        EnsembleConfig(
            members=2,
            reward=RewardConfig(
                backbone=str(tiny_policy_dir),
                max_steps=8,
                batch_size=8,
                learning_rate=3e-3,
                max_length=64,
            ),
        ),
        root=tmp_path,
        name="ensemble",
    )
    prompts = [p.prompt for p in synthetic_pairs(8, seed=3)]
    config = OnPolicyConfig(
        learning_rate=1e-3, max_steps=2, batch_size=4, num_generations=4, max_completion_length=8,
        beta=0.05, warmup_ratio=0.0,
    )  # fmt: skip
    result = train_on_policy(
        prompts, config, policy_ref=tiny_policy_dir, reward=RewardEnsemble.load(fitted.path),
        algorithm="rloo", aggregation="uncertainty_weighted", root=tmp_path, name="rloo",
    )  # fmt: skip
    assert result.metrics["steps"] == 2
    assert np.isfinite(result.metrics["reward_first"]) and np.isfinite(
        result.metrics["reward_final"]
    )
    manifest = read_manifest(result.path)
    assert (
        manifest.kind == "policy-rloo" and manifest.config["aggregation"] == "uncertainty_weighted"
    )
    assert not np.allclose(
        weights(result.path)["model.norm.weight"].numpy(),
        weights(tiny_policy_dir)["model.norm.weight"].numpy(),
    )
