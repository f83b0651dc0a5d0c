"""What the annotate-page browser tests share: which task is shown, and waiting for the next one."""

from playwright.sync_api import expect


def shown_task(page) -> int:
    return int(page.locator("#task-panel").get_attribute("data-task-id"))


def wait_for_next(page, previous: int) -> int:
    expect(page.locator("#task-panel")).not_to_have_attribute("data-task-id", str(previous))
    # Keys are ignored until the new task has settled (tandem.js marks <html data-busy>).
    expect(page.locator("html[data-busy]")).to_have_count(0)
    return shown_task(page)
