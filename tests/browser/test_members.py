"""A manager changes a role and removes a member on the project page, in place."""

import pytest
from playwright.sync_api import expect

from annotation.models import Membership, Role

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_manager_changes_a_role_and_removes_a_member_after_confirming(page, log_in, cast):
    log_in(cast.manager, next=f"/projects/{cast.project.pk}/")
    page.evaluate("window.__sameDocument = true")

    row = page.locator(f"tr[data-member='{cast.annotator.username}']")
    row.get_by_label(f"Role of {cast.annotator.username}").select_option("reviewer")
    row.get_by_role("button", name="Change").click()
    expect(page.locator("#members .success")).to_contain_text(
        f"{cast.annotator.username} is now reviewer."
    )
    assert Membership.objects.get(user=cast.annotator, project=cast.project).role == Role.REVIEWER

    row = page.locator(f"tr[data-member='{cast.other.username}']")
    confirm = row.get_by_role("button", name=f"Yes, remove {cast.other.username}")
    expect(confirm).to_be_hidden()  # nothing is removed by one stray click
    row.locator("summary").click()
    confirm.click()
    expect(page.locator("#members .success")).to_contain_text(
        f"{cast.other.username} was removed from the project."
    )
    expect(page.locator(f"tr[data-member='{cast.other.username}']")).to_have_count(0)
    assert not Membership.objects.filter(user=cast.other, project=cast.project).exists()
    assert page.evaluate("window.__sameDocument") is True
