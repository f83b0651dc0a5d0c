"""The online loop on a hindsight project: it learns from hindsight judgements, and every answer it
sends to annotators has its outcome before anyone can be shown it.

A round runs in process on tiny CPU models: π_0 is the warm-words oracle's tiny Llama (also the
reward backbone), and the same model is the project's outcome simulator, so the outcomes are
really generated from the prompt's hidden facts through the project's simulator settings.
"""

import io
import json
import random

import pytest

from annotation import services
from annotation.models import (
    Judgement,
    ModelVersion,
    Prompt,
    Response,
    Role,
    Round,
    Task,
    TaskResponse,
)
from annotation.selectors.round_data import human_pairs
from annotation.services import rounds
from annotation.services.simulation import TINY_LOOP
from tests.factories import UserFactory, wait_for_export_horizon

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

TRAIN, EVAL = 20, 3


@pytest.fixture(scope="session")
def pi0(tmp_path_factory):
    from training.oracles import oracle_named

    return oracle_named("warm-words").warm_start(
        tmp_path_factory.mktemp("hindsight-models") / "pi0", steps=30
    )


@pytest.fixture
def artifacts(tmp_path, settings, pi0):
    settings.TANDEM_MODEL_ROOTS = [pi0.parent]
    settings.TANDEM_ARTIFACT_ROOT = tmp_path / "artifacts"
    settings.TANDEM_ARTIFACT_ROOT.mkdir()
    return settings.TANDEM_ARTIFACT_ROOT


def _lines() -> list[dict]:
    lines = []
    for i in range(TRAIN):
        lines.append(
            {
                "prompt": f"I need a kettle under {20 + i} dollars. Which one?",
                "responses": [
                    {"text": f"Kettle {i} is perfect and cheap.", "outcome": f"It broke ({i})."},
                    {"text": f"Kettle {i + 1} fits your budget.", "outcome": f"It worked ({i})."},
                ],
                "hidden": {"budget": 20 + i, "kettles": {"A": "breaks", "B": "works"}},
            }
        )
    for i in range(EVAL):
        lines.append(
            {
                "prompt": f"Held out {i}: which lamp?",
                "responses": [],
                "split": "eval",
                "hidden": {"lamps": {"A": "dim"}},
            }
        )
    return lines


def _project(pi0, *, simulator: bool = True):
    creator = UserFactory(is_staff=True)
    settings = {"simulator_model": str(pi0), "max_new_tokens": 8} if simulator else {}
    project = services.project_create(
        creator=creator, name="Hindsight loop", kind="hindsight", kind_settings=settings
    )
    body = "".join(json.dumps(line) + "\n" for line in _lines()).encode()
    job = services.import_create(
        project=project, user=creator, stream=io.BytesIO(body), size=len(body)
    )
    assert job.status == "done", job.errors
    rounds.loop_configure(
        project=project,
        data={
            **TINY_LOOP,
            "enabled": True,
            "policy_model": str(pi0),
            "reward_backbone": str(pi0),
            "ensemble_members": 1,
            "samples_per_prompt": 2,
            "prompts_per_round": 6,
            "eval_prompts": EVAL,
            "reward": {**TINY_LOOP["reward"], "epochs": 1.0},
            "policy": {**TINY_LOOP["policy"], "epochs": 1.0},
            "generation": {"max_new_tokens": 6, "temperature": 1.0},
        },
    )
    return project


def _judge_both_phases(project) -> dict[str, int]:
    """One annotator judges every task: foresight prefers A, hindsight (after the outcome) picks
    by a coin, so the two phases' pairs differ and the test can tell which one trained."""
    user = UserFactory()
    services.membership_set(project=project, username=user.username, role=Role.ANNOTATOR)
    rng = random.Random(7)
    choices = {"A": 0, "B": 0}
    while (lease := services.assignment_lease(annotator=user, project=project)) is not None:
        services.judgement_submit(
            assignment=lease,
            data={"phase": "foresight", "ratings": [5, 2], "choice": "A"},
            idempotency_key=f"f{lease.pk}",
        )
        choice = rng.choice("AB")
        choices[choice] += 1
        services.judgement_submit(
            assignment=lease,
            data={"phase": "hindsight", "ratings": [2, 4], "choice": choice},
            idempotency_key=f"h{lease.pk}",
        )
    wait_for_export_horizon()
    return choices


def test_a_round_trains_on_hindsight_pairs_and_its_answers_carry_simulated_outcomes(pi0, artifacts):
    project = _project(pi0)
    choices = _judge_both_phases(project)
    assert Judgement.objects.filter(project=project, phase="foresight").count() == TRAIN
    # The pairs the loop reads are the hindsight ones: B chosen wherever the coin said B.
    pairs, _, count = human_pairs(project)
    assert count == TRAIN
    chose_second = sum(1 for p in pairs if "fits your budget" in str(p.chosen))
    assert chose_second == choices["B"] and 0 < choices["B"] < TRAIN

    done = rounds.round_run_inline(loop_round=rounds.round_start(project=project))
    assert done.status == "succeeded", done.error
    assert done.judgements == TRAIN  # one per assignment: the foresight rows do not count
    pi1 = ModelVersion.objects.get(project=project, kind="policy", round=1)
    assert pi1.metrics["pairs"] > 0

    # Every answer the round shows (its label tasks and the blind evaluation) has an outcome the
    # project's simulator wrote from the prompt's hidden facts; imported outcomes are untouched.
    shown = Response.objects.filter(
        pk__in=TaskResponse.objects.filter(task__project=project, task__round=1).values(
            "response_id"
        )
    )
    assert Task.objects.filter(project=project, round=1, purpose="evaluation").count() == EVAL
    assert shown.exists()
    for response in shown:
        assert response.outcome_source == "simulated" and response.outcome.strip()
    imported = Response.objects.filter(prompt__project=project, model_version__isnull=True)
    assert {r.outcome_source for r in imported} == {"imported"}
    assert all(r.outcome.startswith("It ") for r in imported)


def test_without_a_simulator_the_round_makes_no_task_and_says_what_to_set(pi0, artifacts):
    project = _project(pi0, simulator=False)
    _judge_both_phases(project)
    done = rounds.round_run_inline(loop_round=rounds.round_start(project=project))
    assert done.status == "failed"
    assert "simulator_model" in done.error
    assert not Task.objects.filter(project=project, round=1).exists()
    assert Round.objects.get(pk=done.pk).policy_version is not None  # earlier stages kept
    assert Prompt.objects.filter(project=project, split="eval").count() == EVAL
