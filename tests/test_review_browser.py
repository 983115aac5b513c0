"""The review loop in a real App (headless Chromium, as in
test_app_browser.py): the review operator sets the view to one patch per
unreviewed label, worst first; a person selects the worst patch and tags
its label ``accepted`` with the App's own tagger; the status operator's
table then counts it.

Screenshots land in ``artifacts/browser/review-*.png``.
"""

from __future__ import annotations

import pytest
from reviewed import ids_by_quality, reviewed_dataset
from test_app_browser import (  # noqa: F401 (app_server is a fixture)
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    _require_browser,
    app_server,
)


def _run_operator(page, label: str) -> None:
    """Opens the operator browser, picks ``DiffuPrompter: <label>``."""
    page.keyboard.press("Escape")
    page.keyboard.press("`")
    page.keyboard.type(label)
    page.get_by_text(f"DiffuPrompter: {label}").click()


@pytest.fixture
def labelled(tmp_path):
    dataset = reviewed_dataset(str(tmp_path / "images"), persistent=True)
    yield dataset
    dataset.delete()


@pytest.mark.slow
def test_a_label_tagged_in_the_app_changes_the_review_status(labelled, app_server):  # noqa: F811
    _require_browser()
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    worst = ids_by_quality(labelled)[0]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{app_server}/datasets/{labelled.name}")
        expect(page.get_by_text("dp").first).to_be_visible(timeout=60_000)

        _run_operator(page, "review pseudo-labels")
        expect(page.get_by_text("One patch per label")).to_be_visible(timeout=30_000)
        page.get_by_text("One patch per label").click()
        page.get_by_role("button", name="Execute", exact=True).click()
        expect(page.get_by_text("Labels left to review")).to_be_visible(timeout=60_000)
        page.screenshot(path=ARTIFACTS / "review-1-left.png")
        page.get_by_role("button", name="Close").click()
        expect(page.get_by_text("12 patches")).to_be_visible(timeout=30_000)
        if page.get_by_text("Dismiss").is_visible():  # the App's Enterprise notice
            page.get_by_text("Dismiss").click()
        page.keyboard.press("Escape")

        first = page.locator("[data-cy=looker]").first
        expect(first.locator("[title='dp: ship']")).to_be_visible()  # worst first: a ship
        first.hover()
        page.locator("[title^='Click to select sample']").first.click()
        page.locator("[data-cy=action-tag-sample-labels]").click()
        page.locator("[data-cy=tagger-switch-label]").click()
        tag_input = page.locator("[data-cy=tagger-container] input").first
        tag_input.fill("accepted")
        tag_input.press("Enter")
        page.screenshot(path=ARTIFACTS / "review-2-tagging.png")
        page.locator("[data-cy=button-Apply]").click()
        expect(page.locator("[data-cy=button-Apply]")).to_be_hidden(timeout=30_000)

        _run_operator(page, "review status")
        page.get_by_role("button", name="Execute", exact=True).click()
        table = page.locator("table").first
        expect(table).to_be_visible(timeout=60_000)
        page.screenshot(path=ARTIFACTS / "review-3-status.png")
        rows = [r.split("\t") for r in table.inner_text().splitlines()]
        browser.close()

    status = {r[0]: r[1:] for r in rows[1:]}
    # labels, unreviewed, accepted, rejected, auto x2, both tags, precision
    assert status["ship"][:4] == ["6", "5", "1", "0"] and status["ship"][-1] == "1"
    assert status["tank"][:4] == ["6", "6", "0", "0"]
    assert status["all"][:3] == ["12", "11", "1"]
    labelled.reload()
    tags = dict(
        zip(
            *[
                [v for r in labelled.values(f"dp.detections.{k}") for v in r]
                for k in ("id", "tags")
            ],
            strict=True,
        )
    )
    assert tags[worst[2]] == ["accepted"]  # the worst label, and only it
    assert sum(bool(t) for t in tags.values()) == 1
