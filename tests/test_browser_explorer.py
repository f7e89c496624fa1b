"""The next-token explorer in a real browser: every view, with a screenshot of each.

Reuses tests/test_browser.py's server (the embedded model, offline), page and helpers;
its own `browser` fixture clears only the explorer-*.png screenshots it writes.
"""

from __future__ import annotations

import os
import re

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from tests.test_browser import (  # noqa: F401 (fixtures)
    CHROMIUM,
    CHROMIUM_ARGS,
    MODEL_WAIT_MS,
    SCREENSHOTS,
    app_url,
    open_tab,
    page,
    screenshot,
)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: install it with `apt-get install -y chromium`"
        if os.environ.get("CI"):
            pytest.fail(f"Browser tests cannot run in CI: {message}.", pytrace=False)
        pytest.skip(message)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("explorer-*.png"):
        old.unlink()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def explorer(page: Page):
    """The explorer tab, opened: it scores the example by itself (no click)."""
    panel = open_tab(page, "Next-token explorer")
    expect(panel.locator('span[title^="token "]').first).to_be_visible(timeout=MODEL_WAIT_MS)
    return panel


def candidates(panel):
    return panel.get_by_role("grid", name=re.compile("^Candidates"))


def open_view(panel, title: str) -> None:
    panel.get_by_role("button", name=re.compile(f"^{re.escape(title)}")).click()


def test_opening_the_tab_shows_the_stages_and_the_sweep(page):
    panel = explorer(page)
    expect(candidates(panel).get_by_role("row")).to_have_count(11)
    stages = panel.locator("table.sampling-stages")
    expect(stages.locator("tr.kept")).to_have_count(10)  # all knobs off: nothing removed
    top_k = panel.get_by_role("spinbutton", name=re.compile("top-k"))
    top_k.fill("3")
    top_k.press("Enter")
    expect(stages.locator("tr.removed")).to_have_count(7)
    expect(stages.locator("tr.kept")).to_have_count(3)
    expect(panel.get_by_text("Entropy of this step as temperature goes from 0.2 to 2")).to_be_visible()
    screenshot(page, "explorer-stages")


def test_logit_lens_shows_paris_at_the_top_layer(page):
    panel = explorer(page)
    open_view(panel, "Logit lens")
    lens = panel.locator("table.logit-lens")
    expect(lens.locator("tr")).to_have_count(32)  # the header, 30 layers and the embeddings
    expect(lens.locator("tr").first).to_contain_text("␣Paris")
    expect(panel.get_by_text(re.compile("Following ␣Paris"))).to_be_visible()
    screenshot(page, "explorer-lens")


def test_attention_on_the_default_fused_layers(page):
    panel = explorer(page)
    open_view(panel, "Attention")
    heatmap = panel.locator("table.attention")
    expect(heatmap).to_be_visible(timeout=MODEL_WAIT_MS)
    expect(heatmap.locator("tr")).to_have_count(31)  # the header and 30 layers
    screenshot(page, "explorer-attention")


def test_beam_search_tree_beside_greedy_and_sampled(page):
    panel = explorer(page)
    open_view(panel, "Beam search")
    panel.get_by_role("button", name="Search", exact=True).click()
    expect(panel.locator(".beam-tree li.kept").first).to_be_visible(timeout=MODEL_WAIT_MS)
    expect(panel.locator(".beam-tree li.dropped").first).to_be_visible()
    table = panel.get_by_role("grid", name="Continuations")
    expect(table.get_by_role("row")).to_have_count(7)  # header, 4 beams, greedy, sampled
    screenshot(page, "explorer-beams")


def test_score_a_continuation_and_compare_two_prompts(page):
    panel = explorer(page)
    open_view(panel, "Score your own continuation")
    panel.get_by_role("textbox", name="Continuation of the text so far").fill(" Paris")
    panel.get_by_role("button", name="How likely?").click()
    expect(panel.get_by_text(re.compile(r"^p = "))).to_be_visible()
    open_view(panel, "Compare two prompts")
    panel.get_by_role("button", name="Compare", exact=True).click()
    expect(panel.get_by_text(re.compile(r"KL\(prompt A ‖ prompt B\)"))).to_be_visible()
    screenshot(page, "explorer-score-compare")


def test_a_clicked_candidate_branches_and_the_session_replays(page):
    panel = explorer(page)
    candidates(panel).get_by_role("row").nth(3).get_by_role("gridcell").nth(1).click()
    branch = panel.locator("#explorer-branch")
    expect(branch.get_by_label("b1")).to_be_checked()
    branch.get_by_label("main").check()
    expect(panel.get_by_role("grid", name="Steps taken").get_by_role("row")).to_have_count(1)
    open_view(panel, "Export or replay")
    panel.get_by_role("button", name="Export", exact=True).click()
    expect(panel.get_by_text(re.compile("explorer-session")).first).to_be_visible()
    panel.get_by_role("button", name="Replay the JSON below").click()
    expect(branch.get_by_label("b1")).to_be_visible()
    screenshot(page, "explorer-branches")
