"""The online-loop dashboard in Chromium: the charts render, and a running stage's progress bar
advances by htmx polling alone while the worker (played by this test) reports progress."""

from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from annotation import services
from annotation.models import Round, TrainingRun
from annotation.services import rounds as round_services

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def no_broker():
    """No worker runs here: the messages round_start sends to the real broker are purged after,
    so a later worker on the test broker never sees runs that no longer exist."""
    from webapp.celery import app

    yield
    app.control.purge()


def report_progress(run: TrainingRun, step: int, total: int) -> None:
    # Exactly what the worker's progress reporter writes.
    TrainingRun.objects.filter(pk=run.pk).update(
        progress_step=step,
        progress_total=total,
        loss=0.69 - step / 100,
        heartbeat_at=timezone.now(),
    )


def bar_width(page) -> float:
    return page.locator("#jobs [role=progressbar] > span").first.bounding_box()["width"]


def test_charts_render_and_the_progress_bar_advances_without_a_reload(
    page, log_in, cast, no_broker
):
    project = cast.project
    round_services.loop_configure(project=project, data={"policy_model": "tiny-policy"})
    now = timezone.now()
    for number, accuracy in [(1, 0.62), (2, 0.74)]:
        finished = round_services.round_start(project=project)
        TrainingRun.objects.filter(round=finished).update(status="succeeded")
        Round.objects.filter(pk=finished.pk).update(
            status="succeeded",
            reward_accuracy=accuracy,
            judgements=10 * number,
            started_at=now - timedelta(minutes=30 - number),
            finished_at=now - timedelta(minutes=20 - number),
        )
    running = round_services.round_start(project=project)
    Round.objects.filter(pk=running.pk).update(status="running", started_at=now)
    reward = running.runs.get(stage="reward")
    TrainingRun.objects.filter(pk=reward.pk).update(status="running", attempts=1)
    report_progress(reward, 6, 40)

    for i, annotator in enumerate([cast.annotator, cast.other, cast.annotator]):
        assignment = services.assignment_lease(annotator=annotator, project=project)
        services.judgement_submit(
            assignment=assignment, data={"choice": "A", "strength": 2}, idempotency_key=f"k{i}"
        )

    log_in(cast.manager, next=f"/projects/{project.pk}/loop")
    accuracy = page.locator("svg[aria-label='Reward accuracy per round']")
    expect(accuracy).to_be_visible()
    expect(accuracy.locator("circle.point")).to_have_count(2)
    # Round 0 (the imported tasks) and rounds 1 to 3; the three judgements were on round 0.
    judgements = page.locator("svg[aria-label='Human judgements per round'] rect.bar")
    expect(judgements).to_have_count(4)
    expect(judgements.first.locator("title")).to_have_text("imported tasks: 3 judgements")
    expect(
        page.locator("svg[aria-label='Annotator throughput, last hour'] rect.bar")
    ).to_have_count(60)

    bar = page.locator("#jobs [role=progressbar]").first
    expect(bar).to_have_attribute("aria-valuenow", "15.0")
    before = bar_width(page)
    page.evaluate("window.__sameDocument = true")

    report_progress(reward, 30, 40)
    expect(bar).to_have_attribute("aria-valuenow", "75.0", timeout=8_000)
    expect(page.locator("#jobs")).to_contain_text("30 / 40 steps")
    page.wait_for_timeout(500)  # the width transitions over .4 s
    assert bar_width(page) > 4 * before
    assert page.evaluate("window.__sameDocument") is True  # no reload: htmx swapped the panel
    page.screenshot(path="/tmp/tandem-dashboard.png", full_page=True)

    # The round ends: the last poll brings the rounds table up to date and the polling stops.
    TrainingRun.objects.filter(round=running).update(status="succeeded", finished_at=timezone.now())
    Round.objects.filter(pk=running.pk).update(
        status="succeeded", reward_accuracy=0.81, finished_at=timezone.now()
    )
    expect(page.locator("#jobs")).to_contain_text("No jobs queued or running.", timeout=8_000)
    expect(page.locator("#jobs")).not_to_have_attribute("hx-trigger", "every 2s")
    expect(page.locator("tr[data-round='3'] .badge")).to_have_text("succeeded")
    expect(accuracy.locator("circle.point")).to_have_count(3)
    assert page.evaluate("window.__sameDocument") is True

    # The start button queues the next round; the jobs panel picks it up and polls again.
    page.get_by_role("button", name="Start a round now").click()
    expect(page.locator("#start-panel")).to_contain_text("Round 4 queued.")
    expect(page.locator("#jobs")).to_contain_text("Round 4 · reward")
    expect(page.locator("#jobs")).to_have_attribute("hx-trigger", "every 2s")
    page.get_by_role("button", name="Start a round now").click()
    expect(page.locator("#start-panel")).to_contain_text("A round is already running")
    assert Round.objects.filter(project=project).count() == 4
    assert page.evaluate("window.__sameDocument") is True
