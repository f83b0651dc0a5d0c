"""The loop dashboard of a hallucination project: each policy's held-out hallucination rate by
category beside the round's human win rate, through Django's test client on Postgres; and the
pairwise dashboard, which shows none of it.

The project and its hand-counted figures are those of tests/annotation/selectors/
test_rounds_hallucination.py (π0: 3 of 4 judged held-out answers with a span, object 3 of 4 with
4 spans, count 1 of 4 with 1; π1: 3 of 6; π2: 1 of 2, object 1 span).
"""

import re

import pytest

from annotation import services
from annotation.models import Role
from annotation.selectors.dashboard import win_rate_text
from annotation.selectors.rounds import rounds_of
from tests.annotation.selectors.test_rounds_hallucination import looped_project
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}
CHART = "Held-out answers with a hallucination, per policy"
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


def cell(row: str, category: str) -> str:
    found = re.search(rf'<td class="num" data-category="{category}">(.*?)</td>', row, re.S)
    assert found, f"no {category} cell"
    return re.sub(r"<[^>]+>", "", found.group(1)).strip()


def test_each_policys_rates_by_category_sit_beside_the_rounds_win_rate(client):
    project, _ = looped_project()
    html = page_of(client, project)
    assert "Hallucinations per round" in html
    pi0, pi1, pi2 = row_of(html, 0), row_of(html, 1), row_of(html, 2)
    # π0: 3 of 4 judged held-out answers, object in 3 (4 spans), count in 1 (1 span).
    assert cell(pi0, "any") == "75%"
    assert cell(pi0, "object") == "75% (4)"
    assert cell(pi0, "count") == "25% (1)"
    assert cell(pi0, "relation") == "0% (0)"
    assert "4 <span" in pi0 and "(2 answers)" in pi0
    assert "the base policy" in pi0
    # π1: 3 of 6; attribute 1 of 6 (16.7%), relation 2 of 6 (33.3%); all tasks 4 of 10.
    assert cell(pi1, "any") == "50%"
    assert cell(pi1, "attribute") == "16.7% (1)"
    assert cell(pi1, "relation") == "33.3% (2)"
    assert '<td class="num">10</td>' in pi1 and '<td class="num">40%</td>' in pi1
    assert cell(pi2, "any") == "50%" and cell(pi2, "object") == "50% (1)"
    # The human win rate is the rounds table's own text for that round.
    rows = {row.number: row for row in rounds_of(project=project)}
    for number, line in ((1, pi1), (2, pi2)):
        text = win_rate_text(rows[number])
        assert f'<td class="win-rate">{text}</td>' in line


def test_the_chart_has_a_bar_per_policy_and_category_with_hand_counted_heights(client):
    project, _ = looped_project()
    html = page_of(client, project)
    svg = re.search(rf'<svg[^>]*aria-label="{re.escape(CHART)}".*?</svg>', html, re.S)
    assert svg, "no chart"
    svg = svg.group(0)
    # Nine groups (any + eight categories) × three policies; a bar for every value, zeros too.
    assert svg.count('<rect class="bar series-') == 3 + 27  # three legend swatches, 27 bars
    assert "π0 · π0 (base) · object: 75.0% of 4 judged held-out answers, 4 spans" in svg
    assert "π1 · π1 vlm · relation: 33.3% of 6 judged held-out answers, 2 spans" in svg
    assert "π2 · π2 vlm · any: 50.0% of 2 judged held-out answers, 1 span<" in svg


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
    response = client.get(f"/projects/{project.pk}/loop/jobs", **HTMX)
    html = response.content.decode()
    assert '<div id="kind-rounds" hx-swap-oob="true">' in html
    assert "Hallucinations per round" in html


def test_a_policy_without_judgements_shows_dashes_and_the_empty_chart_says_why(client):
    project, _ = looped_project()
    project.judgements.all().delete()
    html = page_of(client, project)
    assert cell(row_of(html, 1), "any") == "–"
    assert cell(row_of(html, 1), "object") == "–"
    assert "no held-out answers judged yet" in html


def test_the_pairwise_dashboard_shows_no_kind_panel(client, cast):
    client.force_login(cast.manager)
    html = client.get(f"/projects/{cast.project.pk}/loop").content.decode()
    assert "kind-rounds" not in html and "Hallucinations per round" not in html
    # As before: the charts' section is followed directly by the rounds table.
    assert re.search(
        r'aria-label="Charts">.*?</figure>\s*</section>\s*<section id="rounds"', html, re.S
    )
    final = client.get(f"/projects/{cast.project.pk}/loop/jobs", **HTMX).content.decode()
    assert "kind-rounds" not in final


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
    pi3 = ModelVersion.objects.create(project=project, kind="policy", round=3, name="π3 vlm")
    Round.objects.create(project=project, number=3, status="succeeded", policy_version=pi3)
    prompt = Prompt.objects.filter(project=project, split="eval").first()
    shown = [
        Response.objects.create(prompt=prompt, text="An answer.", model_version=version)
        for version in (pi3, policies[2])
    ]
    task_create(project, prompt, shown, round_number=3, priority=0.0, purpose="evaluation")
    html = client.get(f"/projects/{project.pk}/loop").content.decode()
    assert 'data-policy-round="3"' in html
    assert queries() == before
