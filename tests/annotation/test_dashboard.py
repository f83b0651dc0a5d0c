"""The online-loop dashboard through Django's test client against real Postgres: who sees what,
the settings form, the start button, the rounds table, the charts and the polled jobs panel.

Training does not run here: a round's finished figures are written onto its rows the way the
stages would (the reward stage sets the accuracy, the generate stage stores the policy's answers).
"""

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from annotation import services
from annotation.charts import Bar, Frame, Point, bar_chart, line_chart, nice_ticks
from annotation.models import ModelVersion, Response, Round, Task, TrainingRun
from annotation.selectors.dashboard import throughput_last_hour
from annotation.selectors.rounds import wilson_interval
from annotation.services import round_stages
from annotation.services import rounds as round_services

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}

SETTINGS = {
    "policy_model": "sshleifer/tiny-gpt2",
    "reward_backbone": "minilm",
    "algorithm": "dpo",
    "samples_per_prompt": "4",
    "trigger_judgements": "0",
    "human_share": "0.5",
    "selection": "disagreement",
    "queue": "cpu",
    "prompts_per_round": "32",
    "eval_prompts": "16",
    "ensemble_members": "3",
}


def url(project, tail: str = "") -> str:
    return f"/projects/{project.pk}/loop{tail}"


def svg_of(html: str, title: str) -> str:
    found = re.search(rf'<svg[^>]*aria-label="{re.escape(title)}".*?</svg>', html, re.S)
    assert found, f"no chart titled {title!r}"
    return found.group(0)


def finish_round(loop_round: Round, *, accuracy: float | None, status: str = "succeeded") -> None:
    """What the stages leave behind when a round ends (training itself does not run in tests)."""
    now = timezone.now()
    TrainingRun.objects.filter(round=loop_round).update(status=status, finished_at=now)
    Round.objects.filter(pk=loop_round.pk).update(
        status=status,
        reward_accuracy=accuracy,
        judgements=10,
        started_at=now - timedelta(minutes=4, seconds=12),
        finished_at=now,
    )


@pytest.fixture
def looped(cast):
    round_services.loop_configure(project=cast.project, data={"policy_model": "tiny-policy"})
    return cast


def evaluated_round(project, annotators, *, wins: int, losses: int, policy_name: str) -> Round:
    """Round 1 finished, with blind evaluation tasks (π1 vs π0) judged by the annotators."""
    loop_round = round_services.round_start(project=project)
    finish_round(loop_round, accuracy=0.8125)
    base = ModelVersion.objects.get(project=project, kind="policy", round=0)
    policy = ModelVersion.objects.create(
        project=project, kind="policy", round=1, name=policy_name, parent=base
    )
    Round.objects.filter(pk=loop_round.pk).update(policy_version=policy)
    prompts = [
        t.prompt for t in Task.objects.filter(project=project).order_by("id")[: wins + losses]
    ]
    new_sides = []
    for prompt in prompts:
        new = Response.objects.create(prompt=prompt, text="new answer", model_version=policy)
        old = Response.objects.create(prompt=prompt, text="old answer", model_version=base)
        task = round_stages.task_create(
            project,
            prompt,
            [new, old],
            round_number=1,
            priority=round_stages.EVALUATION_PRIORITY,
            purpose="evaluation",
        )
        new_sides.append(task.pk)
    choices = ["A"] * wins + ["B"] * losses  # the new policy is A on every task here
    for i, choice in enumerate(choices):
        annotator = annotators[i % len(annotators)]
        assignment = services.assignment_lease(annotator=annotator, project=project)
        assert assignment.task_id in new_sides
        services.judgement_submit(
            assignment=assignment, data={"choice": choice, "strength": 2}, idempotency_key=f"k{i}"
        )
    return loop_round


# --- who sees what ----------------------------------------------------------------------------


def test_role_matrix(client, cast):
    page = url(cast.project)
    response = client.get(page)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=")

    client.force_login(cast.outsider)
    assert client.get(page).status_code == 404
    assert client.post(url(cast.project, "/rounds")).status_code == 404

    client.force_login(cast.annotator)
    assert client.get(page).status_code == 403
    assert client.get(url(cast.project, "/jobs"), **HTMX).status_code == 403
    assert client.post(url(cast.project, "/rounds")).status_code == 403

    client.force_login(cast.manager)
    html = client.get(page).content.decode()
    assert 'name="human_share"' in html and "Save settings" in html
    assert "Start a round now" in html
    assert (
        "share of selected pairs sent to humans; the rest the reward model labels" in html.lower()
    )

    client.force_login(cast.trainer)
    response = client.get(page)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'name="human_share"' not in html and "Save settings" not in html
    assert "Human share" in html and "Start a round now" in html
    # A trainer cannot save settings even by posting the form by hand.
    assert client.post(url(cast.project, "/settings"), SETTINGS).status_code == 403


def test_manager_page_and_home_link_to_the_dashboard(client, cast):
    client.force_login(cast.manager)
    assert (
        f'href="{url(cast.project)}"'.encode()
        in client.get(f"/projects/{cast.project.pk}/").content
    )
    client.force_login(cast.trainer)
    assert f'href="{url(cast.project)}"'.encode() in client.get("/").content
    client.force_login(cast.annotator)
    assert f'href="{url(cast.project)}"'.encode() not in client.get("/").content


# --- settings and the start button ------------------------------------------------------------


def test_settings_form_saves(client, cast):
    client.force_login(cast.manager)
    response = client.post(url(cast.project, "/settings"), {**SETTINGS, "enabled": "on"}, **HTMX)
    assert response.status_code == 200
    assert b"<html" not in response.content
    assert b"Settings saved." in response.content
    cast.project.refresh_from_db()
    assert cast.project.loop["enabled"] is True
    assert cast.project.loop["human_share"] == 0.5
    assert cast.project.loop["policy_model"] == "sshleifer/tiny-gpt2"
    # Without htmx: saved, then redirected back to the page.
    response = client.post(url(cast.project, "/settings"), {**SETTINGS, "algorithm": "ipo"})
    assert response.status_code == 302 and response["Location"] == url(cast.project)
    cast.project.refresh_from_db()
    assert cast.project.loop["algorithm"] == "ipo"
    assert cast.project.loop["enabled"] is False  # an unticked box is off


def test_settings_errors_are_shown_next_to_their_field_and_nothing_is_saved(client, cast):
    client.force_login(cast.manager)
    before = dict(cast.project.loop)
    response = client.post(url(cast.project, "/settings"), {**SETTINGS, "human_share": "2"}, **HTMX)
    assert response.status_code == 400
    html = response.content.decode()
    field = re.search(r'<div class="field invalid" data-field="(\w+)">(.*?)</div>', html, re.S)
    assert field and field.group(1) == "human_share"
    assert "must be between 0 and 1" in field.group(2)
    assert 'value="2"' in field.group(2)  # what was typed stays in the box
    cast.project.refresh_from_db()
    assert cast.project.loop == before

    # A rule across fields: the loop needs a base policy to be on.
    response = client.post(
        url(cast.project, "/settings"), {**SETTINGS, "enabled": "on", "policy_model": ""}, **HTMX
    )
    assert response.status_code == 400
    field = re.search(
        r'<div class="field invalid" data-field="(\w+)">(.*?)</div>',
        response.content.decode(),
        re.S,
    )
    assert field.group(1) == "policy_model" and "required when the loop is on" in field.group(2)

    # Without htmx the whole page comes back, with the same error.
    response = client.post(url(cast.project, "/settings"), {**SETTINGS, "samples_per_prompt": "1"})
    assert response.status_code == 400
    assert b"<html" in response.content and b"must be between 2 and 64" in response.content


def test_start_button_queues_a_round_and_a_second_press_conflicts(client, looped):
    project = looped.project
    client.force_login(looped.trainer)
    response = client.post(url(project, "/rounds"), **HTMX)
    assert response.status_code == 200
    html = response.content.decode()
    assert "Round 1 queued." in html
    loop_round = Round.objects.get(project=project)
    assert (loop_round.number, loop_round.status, loop_round.trigger) == (1, "queued", "manual")
    assert loop_round.runs.count() == 4
    # The jobs panel comes along out of band and starts polling; so does the rounds table.
    assert re.search(r'<div id="jobs"[^>]*hx-swap-oob="true"[^>]*hx-trigger="every 2s"', html, re.S)
    assert re.search(r'<section id="rounds"[^>]*hx-swap-oob="true"', html)

    response = client.post(url(project, "/rounds"), **HTMX)
    assert response.status_code == 409
    assert b"a round is already running" in response.content.lower()
    assert Round.objects.filter(project=project).count() == 1


def test_start_without_a_base_policy_says_so(client, cast):
    client.force_login(cast.manager)
    response = client.post(url(cast.project, "/rounds"))
    assert response.status_code == 400
    assert b"set the loop&#x27;s base policy before starting a round" in response.content
    assert not Round.objects.exists()


# --- rounds and charts ------------------------------------------------------------------------


def test_rounds_table_shows_accuracy_and_the_win_rate_with_its_interval(client, looped):
    project = looped.project
    evaluated_round(
        project, [looped.annotator, looped.other], wins=3, losses=1, policy_name="round-1-policy"
    )
    failed = round_services.round_start(project=project)
    finish_round(failed, accuracy=None, status="failed")
    Round.objects.filter(pk=failed.pk).update(
        error="reward: the reward ensemble needs more decisive human judgements: <3> so far"
    )

    client.force_login(looped.manager)
    html = client.get(url(project)).content.decode()
    low, high = wilson_interval(3, 4)
    row = re.search(r'<tr data-round="1">(.*?)</tr>', html, re.S).group(1)
    assert "0.81" in row
    assert f"0.75 [{low:.2f}, {high:.2f}] n=4" in row
    assert "round-1-policy" in row and "4 min 12 s" in row
    assert "succeeded" in row
    assert "no evaluation judgements yet" not in html
    row = re.search(r'<tr data-round="2">(.*?)</tr>', html, re.S).group(1)
    assert "–" in re.search(r'class="win-rate">(.*?)<', row).group(1)
    # A failed round's error is shown in full, escaped.
    assert (
        '<pre class="error-text">reward: the reward ensemble needs more decisive human judgements: '
        "&lt;3&gt; so far</pre>" in html
    )


def test_charts_have_a_point_per_measured_round_and_escaped_labels(client, looped):
    project = looped.project
    evaluated_round(
        project, [looped.annotator, looped.other], wins=2, losses=2, policy_name="<b>π1</b>"
    )
    second = round_services.round_start(project=project)
    finish_round(second, accuracy=0.6)
    third = round_services.round_start(project=project)
    finish_round(third, accuracy=None, status="failed")
    # Two annotators judged two imported tasks: round 0.
    for i, annotator in enumerate([looped.annotator, looped.other]):
        assignment = services.assignment_lease(annotator=annotator, project=project)
        assert assignment.task.round == 0
        services.judgement_submit(
            assignment=assignment, data={"choice": "tie"}, idempotency_key=f"r0-{i}"
        )

    client.force_login(looped.trainer)
    html = client.get(url(project)).content.decode()
    accuracy = svg_of(html, "Reward accuracy per round")
    assert accuracy.count('<circle class="point"') == 2  # round 3 failed before measuring
    assert accuracy.count('class="tick x-tick"') == 3
    assert 'class="reference"' in accuracy and 'stroke-dasharray="5 4"' in accuracy
    assert "<title>Reward accuracy per round</title>" in accuracy

    win = svg_of(html, "Human win rate of π_r over π_r−1")
    assert win.count('<circle class="point"') == 1
    assert win.count('class="error-bar"') == 1
    assert "&lt;b&gt;π1&lt;/b&gt;" in win and "<b>" not in win

    judgements = svg_of(html, "Human judgements per round")
    assert judgements.count('<rect class="bar"') == 4  # rounds 0..3
    assert "<title>imported tasks: 2 judgements</title>" in judgements
    assert "<title>round 1: 4 judgements</title>" in judgements

    throughput = svg_of(html, "Annotator throughput, last hour")
    assert throughput.count('<rect class="bar"') == 60
    per_minute = re.findall(r"<title>\d+ min ago: (\d+) judgements?</title>", throughput)
    assert len(per_minute) == 60 and sum(map(int, per_minute)) == 6


def test_empty_states_instead_of_empty_charts(client, cast):
    client.force_login(cast.manager)
    html = client.get(url(cast.project)).content.decode()
    assert "<svg" not in html
    assert html.count("no rounds yet") == 2
    assert "no judgements yet" in html and "no judgements in the last hour" in html
    assert "No jobs queued or running." in html


def test_throughput_counts_judgements_per_minute_of_the_last_hour(cast):
    for i, annotator in enumerate([cast.annotator, cast.other, cast.annotator]):
        assignment = services.assignment_lease(annotator=annotator, project=cast.project)
        services.judgement_submit(
            assignment=assignment, data={"choice": "A", "strength": 1}, idempotency_key=f"t{i}"
        )
    minutes = throughput_last_hour(project=cast.project)
    assert len(minutes) == 60
    assert [ago for ago, _ in minutes[:2]] == [59, 58] and minutes[-1][0] == 0
    assert sum(n for _, n in minutes) == 3
    later = throughput_last_hour(project=cast.project, now=timezone.now() + timedelta(hours=2))
    assert sum(n for _, n in later) == 0


# --- the polled jobs panel --------------------------------------------------------------------


def test_jobs_partial_polls_while_a_run_is_active_and_stops_after(client, looped):
    project = looped.project
    loop_round = round_services.round_start(project=project)
    run = loop_round.runs.get(stage="reward")
    TrainingRun.objects.filter(pk=run.pk).update(
        status="running", attempts=1, progress_step=3, progress_total=12, loss=0.6931
    )
    Round.objects.filter(pk=loop_round.pk).update(status="running", started_at=timezone.now())

    client.force_login(looped.manager)
    response = client.get(url(project, "/jobs"), **HTMX)
    assert response.status_code == 200
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="jobs"')
    assert "<html" not in html and 'id="rounds"' not in html
    assert 'hx-trigger="every 2s"' in html and "hx-swap-oob" not in html
    assert 'aria-valuenow="25.0"' in html and 'data-width="25.0"' in html
    assert "loss 0.6931" in html and "3 / 12 steps" in html

    # The page itself polls too while the run is active.
    assert 'hx-trigger="every 2s"' in client.get(url(project)).content.decode()

    # The stage fails: its error is shown, polling stops, and the rounds come along out of band.
    TrainingRun.objects.filter(pk=run.pk).update(status="failed", error="ValueError: <boom>")
    Round.objects.filter(pk=loop_round.pk).update(
        status="failed", error="reward: ValueError: <boom>"
    )
    response = client.get(url(project, "/jobs"), **HTMX)
    html = response.content.decode()
    jobs = re.search(r'<div id="jobs"[^>]*>', html).group(0)
    assert "hx-trigger" not in jobs and "hx-swap-oob" not in jobs
    assert '<pre class="error-text">ValueError: &lt;boom&gt;</pre>' in html
    assert re.search(r'<section id="rounds"[^>]*hx-swap-oob="true"', html)
    assert re.search(r'<section id="charts"[^>]*hx-swap-oob="true"', html)
    # The stages after the failed one never ran and are not listed as waiting.
    assert html.count('class="job"') == 1

    # Without htmx the URL is the page.
    assert client.get(url(project, "/jobs")).status_code == 302


def test_jobs_without_an_active_round_do_not_poll(client, looped):
    client.force_login(looped.trainer)
    html = client.get(url(looped.project, "/jobs"), **HTMX).content.decode()
    assert "every 2s" not in html and "No jobs queued or running." in html


def test_dashboard_queries_do_not_grow_with_rounds(client, looped):
    client.force_login(looped.manager)

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(url(looped.project)).status_code == 200
        return len(captured)

    finish_round(round_services.round_start(project=looped.project), accuracy=0.7)
    one = queries()
    for _ in range(3):
        finish_round(round_services.round_start(project=looped.project), accuracy=0.7)
    assert queries() == one <= 12


# --- the SVG helper ---------------------------------------------------------------------------


def test_frame_maps_values_to_hand_computed_coordinates():
    frame = Frame()  # 480 × 240; plot from x 48 to 468 and from y 30 (top) to 196 (bottom)
    assert frame.x(0, 4) == 48 + 0.5 * 105
    assert frame.x(3, 4) == 48 + 3.5 * 105
    assert frame.y(0.0, 0, 1) == 196
    assert frame.y(1.0, 0, 1) == 30
    assert frame.y(0.5, 0, 1) == 113
    assert frame.y(1.7, 0, 1) == 30  # clamped into the plot
    assert frame.y(6, 0, 8) == 196 - 0.75 * 166


def test_line_chart_points_gaps_and_error_bars():
    svg = line_chart(
        [Point("1", 0.25), Point("2", None), Point("3", 0.75, low=0.5, high=1.0)],
        title="Win <rate>",
        x_label="round",
        y_label="rate",
        reference=0.5,
    )
    # Slots of 140 wide: centres at 118, 258, 398; y = 196 - v × 166.
    assert '<circle class="point" cx="118.0" cy="154.5" r="4">' in svg
    assert '<circle class="point" cx="398.0" cy="71.5" r="4">' in svg
    assert svg.count('<circle class="point"') == 2
    assert 'class="series"' not in svg  # the missing round breaks the line: nothing to join
    assert 'd="M398.0 30.0V113.0M394.0 30.0H402.0M394.0 113.0H402.0"' in svg
    assert '<line class="reference" x1="48.0" x2="468.0" y1="113.0" y2="113.0"' in svg
    assert 'role="img" aria-label="Win &lt;rate&gt;"' in svg
    assert "<title>Win &lt;rate&gt;</title>" in svg and "<rate>" not in svg

    joined = line_chart([Point("1", 0.0), Point("2", 1.0)], title="t", x_label="x", y_label="y")
    assert '<path class="series" d="M153.0 196.0 L363.0 30.0"' in joined


def test_bar_chart_scales_to_round_ticks_and_escapes_labels():
    svg = bar_chart(
        [Bar("<a>", 2), Bar("b", 8, note="<img src=x onerror=alert(1)>")],
        title="Bars",
        x_label="x",
        y_label="y",
    )
    # Ticks 0, 2, 4, 6, 8; slots of 210 wide, bars 147 wide centred at 153 and 363.
    assert '<rect class="bar" x="79.5" y="154.5" width="147.0" height="41.5">' in svg
    assert '<rect class="bar" x="289.5" y="30.0" width="147.0" height="166.0">' in svg
    assert [m for m in re.findall(r'class="tick y-tick"[^>]*>([^<]*)<', svg)] == [
        "0", "2", "4", "6", "8",
    ]  # fmt: skip
    assert "&lt;a&gt;" in svg and "&lt;img src=x onerror=alert(1)&gt;" in svg
    assert "<img" not in svg and "<a>" not in svg


def test_nice_ticks():
    assert nice_ticks(7) == [0, 2, 4, 6, 8]
    assert nice_ticks(1) == [0, 0.5, 1]
    assert nice_ticks(1, integer=True) == [0, 1]
    assert nice_ticks(130, integer=True) == [0, 50, 100, 150]
    assert nice_ticks(0) == [0, 1]


def test_empty_charts_are_a_sentence():
    assert "<svg" not in line_chart([], title="t", x_label="x", y_label="y")
    assert "no rounds yet" in line_chart([], title="t", x_label="x", y_label="y")
    assert "nothing" in bar_chart(
        [Bar("0", 0)], title="t", x_label="x", y_label="y", empty="nothing"
    )
    # Rounds without a value yet: the axes, and a sentence across them instead of points.
    svg = line_chart([Point("1", None)], title="t", x_label="x", y_label="y", unmeasured="not yet")
    assert "<circle" not in svg and '<text class="chart-note"' in svg and "not yet</text>" in svg


def test_the_header_says_how_rounds_start_without_contradicting_itself(client, cast):
    client.force_login(cast.manager)

    def header() -> str:
        html = client.get(url(cast.project)).content.decode()
        return re.search(r"<p class=\"muted\" data-loop-state>(.*?)</p>", html, re.S).group(1)

    assert "by hand only (automatic start is off)" in header()
    round_services.loop_configure(
        project=cast.project, data={"enabled": True, "policy_model": "tiny-policy"}
    )
    on_without_count = header()
    # Once read as "loop on · rounds start by hand": the switch and the trigger now read as one.
    assert "loop on" not in on_without_count.lower()
    assert "by hand only (automatic start is on, but no judgement count is set)" in on_without_count
    round_services.loop_configure(project=cast.project, data={"trigger_judgements": 25})
    assert "rounds start by themselves every 25 fresh judgements, or by hand" in header()
    form = client.get(url(cast.project)).content.decode()
    assert "Start rounds automatically" in form and "Loop on" not in form
