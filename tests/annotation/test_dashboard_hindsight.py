"""The loop dashboard of a hindsight project: each policy's flip rate, satisfaction before and after
the outcome and true utility beside the round's human win rate, through Django's test client on
Postgres; and the pairwise and hallucination dashboards, which show none of it.

The project and its hand-counted figures are those of tests/annotation/selectors/
test_rounds_hindsight.py (π0: held out 1 of 3 decisive flipped, satisfaction 3.0 → 3.5, all tasks
3 of 5, 17/6 → 23/6, true utility 0.8 over 1 answer; π1: held out 2 of 4, 3.5 → 3.5, all tasks 5
of 8, 3.75 → 3.0, true utility -1.0; π2: held out 1 of 1, 3.5 → 1.5, all tasks 3 paired + 1
awaiting, utility unknown).
"""

import re

import pytest

from annotation import services
from annotation.kinds import kind_for
from annotation.kinds.pairwise_loop import PairwiseLoop
from annotation.models import Role
from annotation.selectors.dashboard import win_rate_text
from annotation.selectors.rounds import kind_round_stats, rounds_of
from tests.annotation.selectors.test_rounds_hindsight import looped_project
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}
TITLE = "Foresight and hindsight per round"
CHART = "Held-out satisfaction before and after the outcome, per policy"
HOSTILE = '<script>alert("π")</script><img src=x onerror=alert(1)>'


def page_of(client, project) -> str:
    manager = UserFactory()
    services.membership_set(project=project, username=manager.username, role=Role.MANAGER)
    client.force_login(manager)
    response = client.get(f"/projects/{project.pk}/loop")
    assert response.status_code == 200
    return response.content.decode()


def row_of(html: str, round_number: int) -> str:
    found = re.search(rf'<tr data-policy-round="{round_number}">.*?</tr>', html, re.S)
    assert found, f"no row for π{round_number}"
    return found.group(0)


def cell(row: str, stat: str) -> str:
    found = re.search(rf'<td class="num" data-stat="{stat}">(.*?)</td>', row, re.S)
    assert found, f"no {stat} cell"
    return " ".join(re.sub(r"<[^>]+>", "", found.group(1)).split())


def test_each_policys_flips_satisfaction_and_utility_sit_beside_the_win_rate(client, monkeypatch):
    project, _ = looped_project()
    # Win rates exist only for a kind the loop serves; pairwise's rule reads hindsight's choices.
    monkeypatch.setattr(kind_for("hindsight"), "loop", PairwiseLoop(), raising=False)
    html = page_of(client, project)
    assert TITLE in html
    pi0, pi1, pi2 = row_of(html, 0), row_of(html, 1), row_of(html, 2)
    assert cell(pi0, "held-paired") == "4"
    assert cell(pi0, "held-flip-rate") == "33.3% (1/3)"
    assert cell(pi0, "held-satisfaction") == "3.00 → 3.50"
    assert cell(pi0, "all-paired") == "6"
    assert cell(pi0, "all-flip-rate") == "60% (3/5)"
    assert cell(pi0, "all-satisfaction") == "2.83 → 3.83"
    assert cell(pi0, "true-utility") == "0.800 (1 answer)"
    assert "the base policy" in pi0
    assert cell(pi1, "held-flip-rate") == "50% (2/4)"
    assert cell(pi1, "held-satisfaction") == "3.50 → 3.50"
    assert cell(pi1, "all-flip-rate") == "62.5% (5/8)"
    assert cell(pi1, "all-satisfaction") == "3.75 → 3.00"
    assert cell(pi1, "true-utility") == "-1.000 (1 answer)"
    assert cell(pi2, "held-flip-rate") == "100% (1/1)"
    assert cell(pi2, "held-satisfaction") == "3.50 → 1.50"
    assert cell(pi2, "all-paired") == "3 (+1 awaiting)"
    assert cell(pi2, "true-utility") == "unknown"
    # The human win rate is the rounds table's own text for that round (hindsight rows only).
    rows = {row.number: row for row in rounds_of(project=project)}
    assert rows[1].win_rate == 0.375
    for number, line in ((1, pi1), (2, pi2)):
        assert f'<td class="win-rate">{win_rate_text(rows[number])}</td>' in line


def test_the_chart_has_two_bars_per_judged_policy_with_hand_counted_heights(client):
    project, _ = looped_project()
    html = page_of(client, project)
    svg = re.search(rf'<svg[^>]*aria-label="{re.escape(CHART)}".*?</svg>', html, re.S)
    assert svg, "no chart"
    svg = svg.group(0)
    # Three policies judged held out × two phases, and two legend swatches.
    assert svg.count('<rect class="bar series-') == 2 + 6
    assert "π0 · π0 (base) · foresight: 3.00 mean of 4 held-out ratings" in svg
    assert "π1 · π1 policy · hindsight: 3.50 mean of 6 held-out ratings" in svg
    assert "π2 · π2 policy · hindsight: 1.50 mean of 2 held-out ratings" in svg


def test_a_hostile_policy_name_is_escaped_everywhere(client):
    project, _ = looped_project(pi2_name=HOSTILE)
    html = page_of(client, project)
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(&quot;π&quot;)&lt;/script&gt;" in row_of(html, 2)
    svg = re.search(rf'<svg[^>]*aria-label="{re.escape(CHART)}".*?</svg>', html, re.S).group(0)
    assert "&lt;img src=x onerror=alert(1)&gt;" in svg


def test_the_last_poll_refreshes_the_panel_out_of_band(client):
    project, _ = looped_project()
    page_of(client, project)  # logs a manager in
    html = client.get(f"/projects/{project.pk}/loop/jobs", **HTMX).content.decode()
    assert '<div id="kind-rounds" hx-swap-oob="true">' in html
    assert TITLE in html


def test_without_judgements_the_rows_show_dashes_and_the_empty_chart_says_why(client):
    project, _ = looped_project()
    project.judgements.all().delete()
    html = page_of(client, project)
    row = row_of(html, 1)
    assert cell(row, "held-paired") == "0"
    assert cell(row, "held-flip-rate") == "–"
    assert cell(row, "held-satisfaction") == "– → –"
    assert cell(row, "true-utility") == "unknown"
    assert "no held-out paired judgements yet" in html


def test_the_pairwise_and_hallucination_dashboards_show_no_hindsight_panel(client, cast):
    from tests.annotation.selectors.test_rounds_hallucination import (
        looped_project as hallucination_project,
    )

    client.force_login(cast.manager)
    html = client.get(f"/projects/{cast.project.pk}/loop").content.decode()
    assert "kind-rounds" not in html and TITLE not in html
    project, _ = hallucination_project()
    html = page_of(client, project)
    assert "Hallucinations per round" in html and TITLE not in html
    assert 'data-kind-rounds="hindsight"' not in html


def test_the_panels_queries_do_not_grow_with_rounds(client):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from annotation.models import ModelVersion, Prompt, Response, Round
    from annotation.services.round_stages import task_create

    project, policies = looped_project()
    page_of(client, project)

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(f"/projects/{project.pk}/loop").status_code == 200
        return len(captured)

    before = queries()
    pi3 = ModelVersion.objects.create(project=project, kind="policy", round=3, name="π3 policy")
    Round.objects.create(project=project, number=3, status="succeeded", policy_version=pi3)
    prompt = Prompt.objects.filter(project=project, split="eval").first()
    shown = [
        Response.objects.create(prompt=prompt, text="Buy option c.", model_version=version)
        for version in (pi3, policies[2])
    ]
    task_create(project, prompt, shown, round_number=3, priority=0.0, purpose="evaluation")
    html = client.get(f"/projects/{project.pk}/loop").content.decode()
    assert 'data-policy-round="3"' in html
    assert queries() == before


def test_stored_true_utilities_of_loop_answers_are_shown_per_policy(client):
    from tests.annotation.selectors.test_rounds_hindsight import store_utilities

    project, _ = looped_project()
    store_utilities(project)
    html = page_of(client, project)
    # Hand-counted in test_rounds_hindsight: π0 (0.75 + 0.6) / 2; π1 (-1 - 1 + 0.5 + 0.2) / 4;
    # π2 d1's 1.0, where it showed "unknown" without stored utilities.
    assert cell(row_of(html, 0), "true-utility") == "0.675 (2 answers)"
    assert cell(row_of(html, 1), "true-utility") == "-0.325 (4 answers)"
    assert cell(row_of(html, 2), "true-utility") == "1.000 (1 answer)"


# Waterproof wanted, $100 budget: A ($40) lacks it, B ($60) is the best buy, C ($80) complies.
MARKET = {
    "world": "marketplace",
    "product": "speaker",
    "requirement": "waterproof",
    "budget": 100,
    "options": [
        {"name": "A", "price": 40, "features": ["bluetooth"]},
        {"name": "B", "price": 60, "features": ["waterproof"]},
        {"name": "C", "price": 80, "features": ["waterproof", "gps"]},
    ],
}


def test_a_world_simulated_projects_generated_answers_show_their_true_utility(client):
    """The loop's answers get their outcomes from the marketplace world (backend "world"), which
    stores each answer's true utility with it; the panel then knows π_r's mean. By hand: π0 said
    A twice (-1 each), π1 B (60/60 = 1) and C (60/80 = 0.75): mean 0.875."""
    from annotation.models import ModelVersion, Prompt, Response, Round
    from annotation.services.outcomes import outcomes_simulate_now
    from annotation.services.round_stages import task_create

    manager = UserFactory()
    project = services.project_create(
        creator=manager,
        name="Market loop",
        kind="hindsight",
        kind_settings={"simulator_backend": "world", "simulator_model": "marketplace"},
    )
    annotator = UserFactory()
    services.membership_set(project=project, username=annotator.username, role=Role.ANNOTATOR)
    pi0 = ModelVersion.objects.create(project=project, kind="policy", round=0, name="π0 (base)")
    pi1 = ModelVersion.objects.create(
        project=project, kind="policy", round=1, name="π1 policy", parent=pi0
    )
    Round.objects.create(project=project, number=1, status="succeeded", policy_version=pi1)
    customer = [{"role": "user", "content": "A waterproof speaker under $100: A, B or C?"}]
    tasks = []
    for split, purpose, new in (("eval", "evaluation", "B"), ("train", "label", "C")):
        prompt = Prompt.objects.create(
            project=project, messages=customer, split=split, hidden=MARKET
        )
        shown = [
            Response.objects.create(
                prompt=prompt, text=f"I recommend Option {letter}.", model_version=version
            )
            for letter, version in ((new, pi1), ("A", pi0))
        ]
        tasks.append((purpose, prompt, shown))
    # What the loop's select stage does before it makes tasks of new answers.
    assert outcomes_simulate_now(project=project).done == 4
    stored = dict(
        Response.objects.filter(prompt__project=project).values_list("text", "true_utility")
    )
    assert stored == {
        "I recommend Option A.": -1.0,
        "I recommend Option B.": 1.0,
        "I recommend Option C.": 0.75,
    }
    for purpose, prompt, shown in tasks:
        task_create(project, prompt, shown, round_number=1, priority=0.0, purpose=purpose)
    for i in range(2):
        lease = services.assignment_lease(annotator=annotator, project=project)
        for phase, choice in (("foresight", "B"), ("hindsight", "A")):
            services.judgement_submit(
                assignment=lease,
                data={"phase": phase, "ratings": [3, 3], "choice": choice},
                idempotency_key=f"{i}-{phase}",
            )
    html = page_of(client, project)
    assert cell(row_of(html, 0), "true-utility") == "-1.000 (2 answers)"
    assert cell(row_of(html, 1), "true-utility") == "0.875 (2 answers)"
    # Both tasks put π1's better answer first: foresight B never agrees, hindsight A always.
    figures = {p.round: p for p in kind_round_stats(project=project).policies}
    tally = figures[1].all_tasks.tally
    assert (tally.foresight.utility_agreeing, tally.foresight.utility_decisive) == (0, 2)
    assert (tally.hindsight.utility_agreeing, tally.hindsight.utility_decisive) == (2, 2)
