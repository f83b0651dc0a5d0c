"""The pairwise kind: public preference files import as they are, the original preference is kept
and measured against, and only pairwise judgements ever become pairs."""

import gzip
import io
import json
import random
from pathlib import Path
from typing import Any

import pytest

from annotation import kinds, services
from annotation.errors import InvalidInput
from annotation.kinds.base import ExportShape, Kind, field_error
from annotation.kinds.pairwise import Pairwise
from annotation.models import Judgement, Prompt, Role, Task
from annotation.selectors.export import Position, _python_blocks, _sql_blocks, export_judgements
from annotation.selectors.pages import original_preference_agreement
from tests.factories import ProjectFactory, UserFactory, import_tasks

pytestmark = pytest.mark.django_db

HH_SAMPLE = (
    Path(__file__).resolve().parents[4]
    / "shared"
    / "data"
    / ("hh-rlhf-harmless-base-test.jsonl.gz")
)


def run_import(project, lines: list[Any] | bytes):
    body = (
        lines if isinstance(lines, bytes) else "".join(json.dumps(x) + "\n" for x in lines).encode()
    )
    return services.import_create(
        project=project, user=project.created_by, stream=io.BytesIO(body), size=len(body)
    )


def tasks_of(project) -> list[tuple[list[dict], list[str], dict]]:
    """(prompt, response texts in shown order, metadata) of each task, in import order."""
    out = []
    for task in Task.objects.filter(project=project).select_related("prompt").order_by("pk"):
        texts = list(task.slots.order_by("position").values_list("response__text", flat=True))
        out.append((task.prompt.messages, texts, task.prompt.metadata))
    return out


def annotator(project):
    user = UserFactory()
    services.membership_set(project=project, username=user.username, role=Role.ANNOTATOR)
    return user


def judge(project, user, payload: dict):
    lease = services.assignment_lease(annotator=user, project=project)
    judgement, _ = services.judgement_submit(
        assignment=lease, data=payload, idempotency_key=f"k{lease.pk}"
    )
    return lease.task, judgement


def chosen_of(texts: list[str], metadata: dict) -> str:
    return texts["AB".index(metadata["original_preference"])]


@pytest.mark.skipif(not HH_SAMPLE.exists(), reason="the HH-RLHF sample lives in ../shared/data")
def test_the_hh_rlhf_sample_imports_as_it_is(settings):
    settings.TANDEM_IMPORT_INLINE_BYTES = 64 << 20  # imported inside the test, not by a worker
    raw = gzip.decompress(HH_SAMPLE.read_bytes())
    rows = [json.loads(line) for line in raw.splitlines() if line.strip()]
    project = ProjectFactory()
    job = run_import(project, raw)
    assert job.status == "done", job.errors[:3]
    assert job.created == len(rows) == Prompt.objects.filter(project=project).count()

    prompts = list(Prompt.objects.filter(project=project).order_by("pk"))
    tasks = {t.prompt_id: t for t in Task.objects.filter(project=project)}
    positions = []
    for row, prompt in zip(rows, prompts, strict=True):
        assert prompt.messages[0]["role"] == "user" and prompt.messages[-1]["role"] == "user"
        assert all(m["content"] in row["chosen"] for m in prompt.messages)
        task = tasks.get(prompt.pk)
        if task is None:
            # Nothing to compare: one reply is empty, so the prompt came without a task.
            assert prompt.metadata["empty_reply"] in ("chosen", "rejected")
            continue
        texts = list(task.slots.order_by("position").values_list("response__text", flat=True))
        chosen = chosen_of(texts, prompt.metadata)
        rejected = texts[1 - "AB".index(prompt.metadata["original_preference"])]
        assert row["chosen"].rstrip().endswith(chosen) and row["rejected"].rstrip().endswith(
            rejected
        )
        assert prompt.metadata["source_format"] == "hh-rlhf"
        positions.append(prompt.metadata["original_preference"])
    # Shown in random order: the dataset's choice sits in A about half the time.
    assert len(positions) >= len(rows) - 10
    assert 0.4 < positions.count("A") / len(positions) < 0.6


HH_TURNS = "\n\nHuman: Hi there.\n\nAssistant: Hello! How can I help?\n\nHuman: Name a fruit."


def test_hh_transcripts_become_shared_turns_and_two_replies():
    project = ProjectFactory()
    line = {
        "chosen": HH_TURNS + "\n\nAssistant: An apple.",
        "rejected": HH_TURNS + "\n\nAssistant: A carrot.",
        "id": "hh-1",
    }
    assert run_import(project, [line]).status == "done"
    ((prompt, texts, metadata),) = tasks_of(project)
    assert prompt == [
        {"role": "user", "content": "Hi there."},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Name a fruit."},
    ]
    assert sorted(texts) == ["A carrot.", "An apple."] and chosen_of(texts, metadata) == "An apple."
    assert Prompt.objects.get(project=project).external_id == "hh-1"


def test_an_hh_reply_that_makes_up_turns_keeps_them_in_the_reply():
    """A few HH replies contain "Human:" turns the model invented: they are the reply, not the
    prompt (the two transcripts then differ before their last turn)."""
    project = ProjectFactory()
    invented = "Sure.\n\nHuman: thanks\n\nAssistant: You're welcome."
    line = {
        "chosen": HH_TURNS + "\n\nAssistant: " + invented,
        "rejected": HH_TURNS + "\n\nAssistant: No.",
    }
    assert run_import(project, [line]).status == "done"
    ((prompt, texts, metadata),) = tasks_of(project)
    assert len(prompt) == 3 and chosen_of(texts, metadata) == invented


def test_trl_standard_conversational_and_implicit_rows_import():
    project = ProjectFactory()
    lines = [
        {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
        {
            "prompt": [{"role": "user", "content": "What colour is the sky?"}],
            "chosen": [{"role": "assistant", "content": "It is blue."}],
            "rejected": [{"role": "assistant", "content": "It is green."}],
            "split": "eval",
        },
        {
            "chosen": [
                {"role": "user", "content": "What colour is the sky?"},
                {"role": "assistant", "content": "Blue."},
            ],
            "rejected": [
                {"role": "user", "content": "What colour is the sky?"},
                {"role": "assistant", "content": "Green."},
            ],
            "metadata": {"origin": "ultrafeedback"},
        },
    ]
    job = run_import(project, lines)
    assert job.status == "done", job.errors
    standard, conversational, implicit = tasks_of(project)
    assert standard[0] == [{"role": "user", "content": "The sky is"}]
    assert chosen_of(standard[1], standard[2]) == " blue."
    assert conversational[0] == [{"role": "user", "content": "What colour is the sky?"}]
    assert chosen_of(conversational[1], conversational[2]) == "It is blue."
    assert implicit[0] == [{"role": "user", "content": "What colour is the sky?"}]
    assert chosen_of(implicit[1], implicit[2]) == "Blue."
    assert implicit[2]["origin"] == "ultrafeedback" and implicit[2]["source_format"] == "trl"
    assert list(
        Prompt.objects.filter(project=project).order_by("pk").values_list("split", flat=True)
    ) == ["train", "eval", "train"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"chosen": "no turns at all", "rejected": "none"}, "chosen: an HH-RLHF transcript"),
        ({"chosen": HH_TURNS, "rejected": "\n\nAssistant: hi"}, "rejected: an HH-RLHF transcript"),
        ({"chosen": 3, "rejected": [{"role": "assistant", "content": "x"}]}, "chosen: must be"),
        (
            {
                "chosen": "\n\nHuman: a\n\nAssistant: b",
                "rejected": [{"role": "assistant", "content": "x"}],
            },
            "rejected: chosen and rejected must both",
        ),
        (
            {
                "chosen": [{"role": "assistant", "content": "x"}],
                "rejected": [{"role": "assistant", "content": "y"}],
            },
            "prompt: required",
        ),
        (
            {
                "prompt": "q",
                "chosen": [{"role": "user", "content": "x"}],
                "rejected": [{"role": "assistant", "content": "y"}],
            },
            "chosen: after the turns both completions share",
        ),
        (
            {
                "prompt": "q",
                "chosen": [{"role": "assistant"}],
                "rejected": [{"role": "assistant", "content": "y"}],
            },
            "chosen[0]:",
        ),
    ],
)
def test_malformed_preference_rows_are_refused_naming_the_field(line, message):
    project = ProjectFactory()
    job = run_import(project, [{"prompt": "fine", "responses": ["a", "b"]}, line])
    assert job.status == "failed"
    assert [e["line"] for e in job.errors] == [2]
    assert job.errors[0]["message"].startswith(message), job.errors
    assert not Prompt.objects.filter(project=project).exists()


def test_the_shuffle_is_seeded_and_keeps_the_original_preference():
    kind = Pairwise()
    lines = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(40)]
    first = [kind.adapt_line(dict(x), rng=random.Random("seed")) for x in lines]
    rng = random.Random("seed")
    again = [kind.adapt_line(dict(x), rng=rng) for x in lines]
    rng = random.Random("seed")
    assert again == [kind.adapt_line(dict(x), rng=rng) for x in lines]
    for line, adapted in zip(lines, again, strict=True):
        chosen = adapted["responses"]["AB".index(adapted["metadata"]["original_preference"])]
        assert chosen == line["chosen"]
    assert {a["metadata"]["original_preference"] for a in again} == {"A", "B"}
    assert first[0]["responses"] in (["good 0", "bad 0"], ["bad 0", "good 0"])


def test_agreement_with_the_original_preference():
    project = ProjectFactory()
    assert original_preference_agreement(project=project) is None
    import_tasks(project, 2)  # tasks of Tandem's own shape carry no original preference
    assert original_preference_agreement(project=project) is None
    lines = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(3)]
    assert run_import(project, lines).status == "done"
    user = annotator(project)
    for _ in range(2):  # the two plain tasks come first in the queue: not counted
        judge(project, user, {"choice": "A", "strength": 1})
    for want in ("agree", "disagree", "tie"):
        lease = services.assignment_lease(annotator=user, project=project)
        original = Prompt.objects.get(pk=lease.task.prompt_id).metadata["original_preference"]
        choice = {"agree": original, "disagree": "B" if original == "A" else "A", "tie": "tie"}
        services.judgement_submit(
            assignment=lease, data={"choice": choice[want], "strength": 2}, idempotency_key=want
        )
    result = original_preference_agreement(project=project)
    assert (result.tasks, result.judgements, result.agreeing) == (3, 2, 1)
    assert result.percent == 50.0


def test_the_project_page_shows_the_agreement_only_when_the_tasks_carry_a_preference(client):
    project = ProjectFactory()
    client.force_login(project.created_by)
    import_tasks(project, 1)
    assert (
        "Agreement with the imported preference"
        not in client.get(f"/projects/{project.pk}/").content.decode()
    )
    run_import(project, [{"prompt": "q", "chosen": "good", "rejected": "bad"}])
    page = client.get(f"/projects/{project.pk}/").content.decode()
    assert "Agreement with the imported preference" in page


class Probe(Kind):
    """A test-only kind whose answers look like pairwise ones ("A"), as a hallucination
    judgement's do."""

    name = "probe"
    label = "Probe"
    template = "annotation/kinds/pairwise.html"
    export_shapes = {
        "probe_rows": ExportShape(
            name="probe_rows", description="test", row=lambda r: {"cursor": r.cursor}
        )
    }

    def validate_payload(self, data, *, task):
        if data.get("choice") not in ("A", "B", "tie"):
            raise field_error("choice", "must be A, B or tie")
        return {"choice": data["choice"], "spans": []}, data["choice"]


@pytest.fixture
def probe(monkeypatch):
    monkeypatch.setitem(kinds._REGISTRY, "probe", Probe())


@pytest.mark.django_db(transaction=True)
def test_another_kinds_answer_a_is_never_exported_as_a_pair(probe):
    project = ProjectFactory(overlap=1)
    import_tasks(project, 2)
    first, second = Task.objects.filter(project=project).order_by("pk")
    # A task of another kind in a pairwise project: its "A" is not a preference between two
    # responses (the hazard of selecting pairs on the answer instead of the kind).
    Task.objects.filter(pk=first.pk).update(kind="probe")
    user = annotator(project)
    task, probed = judge(project, user, {"choice": "A"})
    assert (task.pk, probed.kind, probed.answer) == (first.pk, "probe", "A")
    _, paired = judge(project, user, {"choice": "A", "strength": 2})
    end = Position(
        *Judgement.objects.filter(project=project)
        .order_by("-commit_seq", "-id")
        .values_list("commit_seq", "id")
        .first()
    )
    for blocks in (_sql_blocks, _python_blocks):
        pairs = [
            json.loads(x)
            for b in blocks(project, "pairs", Position(0, 0), end, 10, None)
            for x in b.split("\n")
            if x
        ]
        assert [r["judgement_ids"] for r in pairs] == [[paired.pk]], blocks.__name__
        raw = [
            json.loads(x)
            for b in blocks(project, "raw", Position(0, 0), end, 10, None)
            for x in b.split("\n")
            if x
        ]
        assert [r["kind"] for r in raw] == ["probe", "pairwise"], blocks.__name__

    # A project of the other kind has no pairs to offer at all: a 400 names its shapes.
    other = ProjectFactory(kind="probe")
    with pytest.raises(InvalidInput, match="shape: must be one of probe_rows, raw"):
        export_judgements(project=other, shape="pairs", since=None)


def test_gold_score_and_training_rows():
    kind = Pairwise()
    assert kind.gold_score({"choice": "A", "strength": 2}, {"choice": "A"}) == 1.0
    assert kind.gold_score({"choice": "B", "strength": 2}, {"choice": "A"}) == 0.0
    assert kind.gold_score({"choice": "A"}, {"strength": 2}) is None
    rows = [{"prompt": [], "chosen": [], "rejected": []}]
    assert kind.training_rows(rows) == rows
