"""The REST export loads straight into TRL's DPOTrainer: two steps on a tiny model built here."""

import math

import pytest

from tests.factories import wait_for_export_horizon

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_pairs_export_trains_dpo_for_two_steps(cast, api, tmp_path):
    datasets = pytest.importorskip("datasets")
    torch = pytest.importorskip("torch")
    trl = pytest.importorskip("trl")
    from training.models import TinyModelConfig, build_tiny_causal_lm, build_tokenizer

    annotator = api(cast.annotator)
    for i in range(8):
        lease = annotator.post(f"/api/v1/projects/{cast.project.pk}/assignments").json()
        annotator.post(
            f"/api/v1/assignments/{lease['id']}/judgement",
            {"choice": "AB"[i % 2], "strength": 1 + i % 3},
            format="json",
            HTTP_IDEMPOTENCY_KEY=f"k{i}",
        )
    wait_for_export_horizon()
    response = api(cast.trainer).get(f"/api/v1/projects/{cast.project.pk}/export?shape=pairs")
    assert response.status_code == 200
    assert response["Content-Disposition"] == (
        f'attachment; filename="project-{cast.project.pk}-pairs.jsonl"'
    )
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b"".join(response.streaming_content))

    dataset = datasets.load_dataset("json", data_files=str(path), split="train")
    assert len(dataset) == 8
    assert dataset[0]["chosen"][0]["role"] == "assistant"
    # Every line carries its resume point, and that extra column is no obstacle to TRL.
    assert all(cursor.startswith("c1.") for cursor in dataset["cursor"])

    corpus = [
        m["content"] for row in dataset for m in row["prompt"] + row["chosen"] + row["rejected"]
    ]
    tokenizer = build_tokenizer(corpus, vocab_size=300)
    torch.manual_seed(0)
    # Saved and passed by path, as a trainer would pass a real model id: TRL builds the DPO
    # reference model from that same path.
    model_dir = tmp_path / "tiny-llama"
    build_tiny_causal_lm(
        tokenizer,
        TinyModelConfig(hidden_size=32, layers=1, heads=2, intermediate=64),
        path=model_dir,
    )
    config = trl.DPOConfig(
        output_dir=str(tmp_path / "dpo"),
        per_device_train_batch_size=4,
        max_steps=2,
        learning_rate=1e-3,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        max_length=256,
    )
    trainer = trl.DPOTrainer(
        model=str(model_dir), args=config, train_dataset=dataset, processing_class=tokenizer
    )
    result = trainer.train()
    assert trainer.state.global_step == 2
    assert math.isfinite(result.training_loss)
