"""Policy training for a round: iterative DPO (default), KTO, and on-policy RLOO/GRPO.

Step 4 of the online loop (DESIGN.md). Each entry point turns validated
examples (``training.data``) into a TRL dataset, runs one TRL trainer, and
publishes the trained policy atomically through ``artifacts.publish_run``.
Each method is its own module, config and trainer together (``training.dpo``,
``training.kto``, ``training.on_policy``; what they share is in
``training.policy_base``); callers import them from here. This module also
holds ``completion_logprobs``, the log-probability that DPO moves.

- ``train_dpo``: iterative DPO (Rafailov et al. 2023, "Direct Preference
  Optimization"; the iterative recipe of Dong et al. 2024, "RLHF Workflow:
  From Reward Modeling to Online RLHF"): round r warm-starts from
  π_{r-1} (``policy_ref``) and is regularised towards a FIXED reference
  π_0 (``reference_ref``), not towards π_{r-1}. ``loss="ipo"`` swaps the
  logistic loss for IPO's squared one (Azar et al. 2023).
- ``train_kto``: KTO on unpaired desirable/undesirable labels (Ethayarajh et
  al. 2024), for rating feedback.
- ``train_on_policy``: RLOO (Ahmadian et al. 2024) or GRPO (Shao et al. 2024)
  with the reward ensemble as the reward function, aggregated by its mean,
  its worst member (WCO) or mean − λ·std (UWO) (Coste et al. 2024, "Reward
  Model Ensembles Help Mitigate Overoptimization").

LoRA (``lora=True``) and the reference. TRL computes the reference of a
fresh adapter by disabling it, which is only π_0 when the adapter sits on
π_0 itself. So, per round:

- ``policy_ref == reference_ref`` (round 1): a new adapter on π_0; reference =
  the adapter-disabled model (no second copy in memory).
- ``policy_ref != reference_ref`` (later rounds): π_{r-1} is loaded as a full
  model (a LoRA round publishes its adapter *merged* into the weights, see
  below), a new adapter goes on top, and π_0 is loaded as an explicit
  ``ref_model`` so the reference stays fixed.

A LoRA round publishes the merged full model (so every generation backend,
vLLM included, loads it like any checkpoint, and the next round can
warm-start from it) and the adapter alone under ``adapter/``, the small
delta from ``policy_ref`` for inspection or reuse.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from training.data import Message, render_messages
from training.dpo import DPOConfig, train_dpo
from training.kto import KTOConfig, train_kto
from training.on_policy import (
    Aggregation,
    OnPolicyConfig,
    ensemble_reward_function,
    train_on_policy,
)
from training.policy_base import (
    PolicyResult,
    PolicyTrainingConfig,
    load_causal_lm,
    trl_training_args,
)

if TYPE_CHECKING:
    import numpy as np
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "Aggregation",
    "DPOConfig",
    "KTOConfig",
    "OnPolicyConfig",
    "PolicyResult",
    "PolicyTrainingConfig",
    "completion_logprobs",
    "ensemble_reward_function",
    "train_dpo",
    "train_kto",
    "train_on_policy",
    "trl_training_args",
]


def completion_logprobs(
    model: PreTrainedModel | str | Path,
    prompts: Sequence[list[Message]],
    completions: Sequence[list[Message] | str],
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    batch_size: int = 16,
) -> np.ndarray:
    """Sum of log π(completion tokens | prompt) per example, shape ``[n]`` (fp64).

    The quantity DPO moves: its implicit reward is β·(log π − log π_ref).
    The completion starts where the rendered prompt (with the generation
    prompt) ends, as in TRL's preprocessing.
    """
    import numpy as np
    import torch

    from training.models import load_tokenizer

    if isinstance(model, str | Path):
        tokenizer = tokenizer or load_tokenizer(model)
        model = load_causal_lm(model)
    if tokenizer is None:
        raise ValueError("pass tokenizer= with a loaded model")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    totals: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            chunk = range(start, min(start + batch_size, len(prompts)))
            prompt_lengths, sequences = [], []
            for i in chunk:
                prompt_text = tokenizer.apply_chat_template(
                    prompts[i], tokenize=False, add_generation_prompt=True
                )
                full_text = render_messages(tokenizer, prompts[i], completions[i])
                prompt_lengths.append(
                    len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
                )
                sequences.append(tokenizer(full_text, add_special_tokens=False)["input_ids"])
            width = max(len(s) for s in sequences)
            ids = torch.full((len(sequences), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, seq in enumerate(sequences):
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            logps = torch.log_softmax(logits[:, :-1], dim=-1).gather(
                -1, ids[:, 1:, None].to(device)
            )[..., 0]
            for row, seq in enumerate(sequences):
                totals.append(float(logps[row, prompt_lengths[row] - 1 : len(seq) - 1].sum()))
    model.train(was_training)
    return np.asarray(totals, dtype=np.float64)
