"""Simulated annotators on a hallucination project: the scene oracle judges the demo's "Shapes"
tasks over REST as a careful person would, and the project's figures then say what the scenes say.

The answer key the demo stores beside each scene (written by `training.scenes.respond` when it
made the answer up) is the referee here, not the oracle's own reading of the text.
"""

import io
import random

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from annotation import services
from annotation.demo_hallucination import MODELS, TASKS, seed_hallucination_project
from annotation.errors import InvalidInput
from annotation.kinds.hallucination.simulation import SceneOracle, judge, without_claims
from annotation.models import FeedbackKind, Judgement, Prompt, Role, TaskResponse
from annotation.selectors.hallucination import hallucination_stats
from annotation.services import simulation
from tests.factories import ProjectFactory, UserFactory, import_tasks
from training import scenes
from training.oracles import WarmWords

pytestmark = pytest.mark.usefixtures("media")


def shapes_project():
    return seed_hallucination_project(creator=UserFactory(is_staff=True), annotators=[])[0]


def assert_only_false_sentences_fixed(scene, original, fixed):
    """`fixed` is `original` with each false claim replaced by a true one: the same claims in the
    same order, the true ones word for word, and the text around them (lead-in) untouched."""
    before, after = scenes.claims_of(scene, original), scenes.claims_of(scene, fixed)
    assert len(after) == len(before) and all(claim.true for claim in after), fixed
    for old, new in zip(before, after, strict=True):
        assert (fixed[new.start : new.end] == original[old.start : old.end]) == old.true
    gaps = [0, *(x for c in before for x in (c.start, c.end)), len(original)]
    new_gaps = [0, *(x for c in after for x in (c.start, c.end)), len(fixed)]
    assert [original[a:b] for a, b in zip(gaps[::2], gaps[1::2], strict=True)] == [
        fixed[a:b] for a, b in zip(new_gaps[::2], new_gaps[1::2], strict=True)
    ]


def answer_key(prompt, model):
    """(false spans as (start, end, category), true claims) the generator recorded."""
    key = prompt.metadata["answer_key"][model]
    return [(s, e, c) for s, e, c, true in key if not true], sum(true for *_, true in key)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_oracle_annotators_mark_every_false_claim_over_rest(live_server):
    project = shapes_project()
    out = io.StringIO()
    call_command(
        "simulate_annotators",
        url=live_server.url,
        project=project.pk,
        annotators=2,
        correction_share=0.5,
        stdout=out,
    )
    report = out.getvalue()
    # The demo's overlap is 2: both annotators judged every task.
    judgements = list(Judgement.objects.filter(project=project).select_related("task__prompt"))
    assert len(judgements) == 2 * TASKS
    assert f"annotators gave {2 * TASKS} judgements" in report, report

    corrected = 0
    for judgement in judgements:
        prompt = judgement.task.prompt
        shown = list(
            TaskResponse.objects.filter(task=judgement.task)
            .order_by("position")
            .values_list("response__model_name", "response__text")
        )
        payload = judgement.payload
        false_counts = []
        for position, (model, _) in enumerate(shown):
            false, _ = answer_key(prompt, model)
            marked = [
                (s["start"], s["end"], s["category"])
                for s in payload["spans"]
                if s["response"] == position
            ]
            assert marked == false, (prompt.external_id, model)
            false_counts.append(len(false))
        # The demo's answers never tie on false claims: the choice is the one with fewer.
        assert payload["choice"] == ("A" if false_counts[0] < false_counts[1] else "B")
        assert payload["helpful_choice"] is None
        if payload["correction"] is not None:
            corrected += 1
            worse = 0 if payload["choice"] == "B" else 1
            model, text = shown[worse]
            assert payload["correction"]["response"] == worse
            false, true = answer_key(prompt, model)
            scene = scenes.Scene.from_dict(prompt.metadata["scene"])
            # The default style fixes every false claim (RLHF-V) and keeps the rest as it was.
            assert false
            assert_only_false_sentences_fixed(scene, text, payload["correction"]["text"])
    # About half the tasks, the same for both annotators of a task (decided per task).
    assert 0 < corrected < len(judgements) and corrected % 2 == 0

    stats = {row.source: row for row in hallucination_stats(project=project).sources}
    a, b = (stats[model] for model, _, _ in MODELS)
    assert a.judged == b.judged == 2 * TASKS
    assert b.hallucinated > a.hallucinated
    assert b.spans_per_response > a.spans_per_response
    # The command printed the same figures.
    assert f"{b.hallucinated:.1%}" in report and "llava-sim-b" in report


@pytest.mark.django_db
def test_the_lease_carries_no_scene_and_the_oracle_reads_it_server_side(api):
    project = shapes_project()
    annotator = UserFactory()
    services.membership_set(project=project, username=annotator.username, role=Role.ANNOTATOR)
    lease = api(annotator).post(f"/api/v1/projects/{project.pk}/assignments")
    assert lease.status_code == 201
    task = lease.json()["task"]
    # What the annotator is shown: the image and its captions, never the scene or answer key.
    assert "metadata" not in task and "scene" not in lease.content.decode()
    assert "answer_key" not in lease.content.decode() and "image" in task

    # The in-process path gives the same judgements as the command's REST one.
    given = simulation.oracle_label_queue(
        project=project, annotator=annotator, options={"correction_share": 0.0}
    )
    assert given == TASKS
    for judgement in Judgement.objects.filter(project=project).select_related("task__prompt"):
        assert judgement.payload["correction"] is None
        models = TaskResponse.objects.filter(task=judgement.task).order_by("position")
        marked = len(judgement.payload["spans"])
        assert marked == sum(
            len(answer_key(judgement.task.prompt, r.response.model_name)[0]) for r in models
        )


@pytest.mark.django_db
def test_a_task_without_a_scene_is_refused_by_name_and_nothing_is_written_for_it():
    project = shapes_project()
    annotator = UserFactory()
    services.membership_set(project=project, username=annotator.username, role=Role.ANNOTATOR)
    # A manager's own hallucination data has no scene: the oracle cannot judge it.
    Prompt.objects.filter(project=project).update(metadata={"topic": "shapes"})
    with pytest.raises(InvalidInput, match=r"task \d+: its prompt's metadata holds no scene"):
        simulation.oracle_label_queue(project=project, annotator=annotator)
    assert not Judgement.objects.filter(project=project).exists()


def _response(scene, rng, n_true, n_false, categories=scenes.CATEGORIES):
    question = scenes.Question("Describe the image.")
    return scenes.respond(
        scene, question, rng, n_true=n_true, n_false=n_false, categories=categories
    )


def test_after_a_tie_on_false_claims_the_more_informative_answer_is_the_helpful_one():
    rng = random.Random(3)
    scene = scenes.random_scene(rng, min_items=4, max_items=6)
    thin, rich = _response(scene, rng, 1, 1), _response(scene, rng, 3, 1)
    assert judge(scene, [thin.text, rich.text]) | {"spans": None} == {
        "choice": "tie",
        "helpful_choice": "B",
        "spans": None,
    }
    same = _response(scene, rng, 1, 1)
    verdict = judge(scene, [thin.text, same.text])
    assert (verdict["choice"], verdict["helpful_choice"]) == ("tie", "tie")
    # Fewer false claims wins however much the other one says.
    clean = _response(scene, rng, 1, 0)
    assert judge(scene, [rich.text, clean.text])["choice"] == "B"
    assert "helpful_choice" not in judge(scene, [rich.text, clean.text])


def test_spans_follow_the_projects_categories_and_a_correction_fixes_or_deletes_false_claims():
    rng = random.Random(5)
    scene = scenes.random_scene(rng, min_items=4, max_items=6)
    answer = _response(scene, rng, 2, 2, categories=("attribute", "count"))
    other = _response(scene, rng, 2, 0)
    false = answer.false_claims
    # A category the project lacks goes under "other" where it has one, else is not marked.
    spans = judge(scene, [answer.text, other.text], categories=("count", "other"))["spans"]
    assert [(s["start"], s["end"], s["category"]) for s in spans] == [
        (c.start, c.end, "count" if c.category == "count" else "other") for c in false
    ]
    spans = judge(scene, [answer.text, other.text], categories=("count",))["spans"]
    assert [s["category"] for s in spans] == ["count"]

    # By default each false claim is fixed, as RLHF-V's annotators do: only its words change.
    verdict = judge(scene, [answer.text, other.text], correct=True)
    assert verdict["correction"]["response"] == 0
    fixed = verdict["correction"]["text"]
    assert fixed != answer.text
    assert_only_false_sentences_fixed(scene, answer.text, fixed)

    verdict = judge(scene, [answer.text, other.text], correct=True, correction_style="delete")
    assert verdict["correction"]["response"] == 0
    shorter = verdict["correction"]["text"]
    assert shorter == without_claims(answer.text, false)
    assert "  " not in shorter and not shorter.startswith(" ") and not shorter.endswith(" ")
    assert [c.true for c in scenes.claims_of(scene, shorter)] == [True, True]
    # Nothing to correct when neither answer says anything false.
    assert "correction" not in judge(scene, [other.text, other.text], correct=True)


@pytest.mark.django_db
def test_each_kind_gets_its_own_oracle_and_bad_options_are_refused_by_name():
    shapes = ProjectFactory(kind=FeedbackKind.HALLUCINATION)
    assert isinstance(simulation.oracle_annotator(project=shapes), SceneOracle)
    with pytest.raises(InvalidInput, match="correction_share"):
        simulation.oracle_annotator(project=shapes, options={"correction_share": 1.5})
    with pytest.raises(InvalidInput, match="correction_style: must be one of fix, delete") as bad:
        simulation.oracle_annotator(project=shapes, options={"correction_style": "rewrite"})
    assert bad.value.errors[0]["field"] == "correction_style"
    for style in ("fix", "delete"):
        oracle = simulation.oracle_annotator(project=shapes, options={"correction_style": style})
        assert oracle.correction_style == style
    pairwise = ProjectFactory(kind=FeedbackKind.PAIRWISE)
    oracle = simulation.oracle_annotator(project=pairwise, options={"oracle": "warm-words"})
    task = {"id": 1, "responses": [{"text": "the lake is warm bright"}, {"text": "the lake"}]}
    assert oracle.answer(task) == {"choice": "A", "strength": 2}
    with pytest.raises(InvalidInput) as refused:
        simulation.oracle_annotator(project=pairwise, options={"oracle": "no-such-oracle"})
    assert refused.value.errors[0]["field"] == "oracle"

    # In process, the pairwise queue is judged by the warm-words preference as before.
    import_tasks(pairwise, 4)
    annotator = UserFactory()
    services.membership_set(project=pairwise, username=annotator.username, role=Role.ANNOTATOR)
    assert simulation.oracle_label_queue(project=pairwise, annotator=annotator) == 4
    for judgement in Judgement.objects.filter(project=pairwise):
        a, b = (
            TaskResponse.objects.filter(task=judgement.task)
            .order_by("position")
            .values_list("response__text", flat=True)
        )
        assert judgement.payload["choice"] == WarmWords().prefer(a, b)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_command_refuses_a_bad_correction_share_before_anyone_is_created(live_server):
    project = ProjectFactory(kind=FeedbackKind.HALLUCINATION)
    with pytest.raises(CommandError, match="correction_share"):
        call_command(
            "simulate_annotators",
            url=live_server.url,
            project=project.pk,
            correction_share=-0.1,
            stdout=io.StringIO(),
        )
    with pytest.raises(CommandError, match="correction_style"):
        call_command(
            "simulate_annotators",
            url=live_server.url,
            project=project.pk,
            correction_style="rewrite",
            stdout=io.StringIO(),
        )
    assert not project.memberships.filter(role=Role.ANNOTATOR).exists()


def test_the_command_line_offers_only_the_known_correction_styles():
    with pytest.raises(CommandError, match="--correction-style: invalid choice: 'rewrite'"):
        call_command("simulate_annotators", "--correction-style=rewrite", stdout=io.StringIO())
