"""The page in a real browser: Playwright drives Debian's Chromium through all four tabs.

The app is served in this process (page and /v1, as `python app.py` serves them) on a
free 127.0.0.1 port, with the embedded SmolLM2-135M-Instruct as chat model (offline, the
default chat model is not cached) and the tiny random Marian model for zh→en only, so the
other directions show the offline message. Nothing else is reached.

Each test leaves a full-page screenshot of its tab in artifacts/screenshots/ under the
repository root (git-ignored); the folder is printed at the end of the pytest run.

Chromium comes from the system (`apt-get install -y chromium`); Playwright's own browser
download is not used. Without /usr/bin/chromium these tests skip, or fail under CI=true.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from modules.app_context import AppContext
from modules.tasks.chat import live_generation_threads
from modules.config import DEFAULT_TRANSLATION_MODELS, EMBEDDED_MODEL
from modules.serving.launch import create_app, serve_in_thread
from modules.ui.layout import build_demo
from tests.conftest import make_settings, wait_for_generations

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"
MODEL_WAIT_MS = 120_000  # the first reply may load (or even convert) the embedded model
STEP_WAIT_MS = 60_000  # anything else; the machine is slow and shared
SETTINGS_ACCORDION = "System prompt and generation settings"

expect.set_options(timeout=STEP_WAIT_MS)


# --- fixtures ----------------------------------------------------------------
class _ScreenshotReport:
    """Names the screenshot folder in pytest's terminal summary, with or without -s."""

    def pytest_terminal_summary(self, terminalreporter):
        if any(SCREENSHOTS.glob("*.png")):
            terminalreporter.write_sep("-", "browser screenshots")
            terminalreporter.write_line(f"Screenshots of each tab: {SCREENSHOTS}")


@pytest.fixture(scope="module")
def browser(request):
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: install it with `apt-get install -y chromium`"
        if os.environ.get("CI"):
            pytest.fail(f"Browser tests cannot run in CI: {message}.", pytrace=False)
        pytest.skip(message)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()
    plugins = request.config.pluginmanager
    if not plugins.has_plugin("browser-screenshots"):
        plugins.register(_ScreenshotReport(), "browser-screenshots")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
    print(f"\nScreenshots of each tab: {SCREENSHOTS}")


@pytest.fixture(scope="module")
def app_url(tiny_marian_dir, shared_cache):
    translation_models = {**DEFAULT_TRANSLATION_MODELS, "zh-en": str(tiny_marian_dir)}
    context = AppContext.create(make_settings(translation_models=translation_models), shared_cache)
    assert context.chat_model.ref == EMBEDDED_MODEL  # offline: the embedded model
    demo = build_demo(context)
    with serve_in_thread(create_app(demo, context)) as url:
        yield url


@pytest.fixture
def page(browser, app_url, request):
    """A fresh browser session (its own Gradio session) on the page, header shown.
    A failed test leaves FAILED-<test>.png beside the other screenshots."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    outside: list[str] = []  # the page may reach this server only, nothing on the network

    def refuse(route):
        outside.append(route.request.url)
        route.abort()

    context.route(re.compile(r"^(?!https?://127\.0\.0\.1[:/])"), refuse)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(app_url)
    expect(page.locator("#active-model")).to_contain_text(EMBEDDED_MODEL)
    failed_before = request.session.testsfailed
    yield page
    if request.session.testsfailed > failed_before:
        failure = SCREENSHOTS / f"FAILED-{request.node.name}.png"
        page.screenshot(path=str(failure), full_page=True)
        print(f"screenshot of the failure: {failure}")
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
    assert not outside, f"the page asked for something beyond this server: {outside}"


# --- helpers -----------------------------------------------------------------
def open_tab(page: Page, name: str):
    """Click a top-level tab; return its panel (the first visible tabpanel)."""
    tab = page.get_by_role("tab", name=name, exact=True)
    tab.click()
    expect(tab).to_have_attribute("aria-selected", "true")
    return page.locator('[role="tabpanel"]:visible').first


def screenshot(page: Page, name: str) -> Path:
    """A full-page screenshot; the page must not show a raw traceback."""
    expect(page.locator("body")).not_to_contain_text("Traceback")
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def textarea(scope, label: str):
    """A textbox by its visible label. Gradio puts an output box's copy button inside its
    <label>, which then labels the button, so get_by_label cannot find such a box."""
    label_text = scope.page.get_by_test_id("block-info").get_by_text(label, exact=True)
    return scope.locator("label").filter(has=label_text).locator("textarea")


def chat_settings(page: Page, max_new_tokens: int) -> None:
    """Greedy decoding and a reply length, in the chat tab's settings accordion."""
    accordion = page.get_by_role("button", name=SETTINGS_ACCORDION)
    sample = page.get_by_role("checkbox", name="Sample (off = greedy)")
    if not sample.is_visible():
        accordion.click()
    sample.uncheck()
    expect(sample).not_to_be_checked()
    number = page.get_by_role("spinbutton", name="number input for Max new tokens")
    number.fill(str(max_new_tokens))
    number.press("Tab")
    slider = page.get_by_role("slider", name="range slider for Max new tokens")
    expect(slider).to_have_value(str(max_new_tokens))


def send(page: Page, text: str) -> None:
    box = page.get_by_placeholder("Type a message")
    box.fill(text)
    box.press("Enter")
    expect(page.get_by_test_id("user").last).to_have_text(text)


def last_reply_state(page: Page) -> dict | None:
    """The last reply's text, its usage line (None until there) and the status line, in one
    DOM read with no waiting: the chatbot re-renders as it streams, so elements come and go."""
    return page.evaluate(
        """() => {
            const rows = document.querySelectorAll('.message-row.bot-row');
            if (!rows.length) return null;
            const parts = rows[rows.length - 1].querySelectorAll('[data-testid="bot"]');
            const texts = Array.from(parts, part => part.innerText.trim());
            return {
                text: texts[0] || '',
                usage: texts.find(t => t.includes('finish:')) || null,
                status: document.querySelector('#chat-status')?.innerText.trim() ?? null,
            };
        }"""
    )


def last_reply(page: Page):
    return page.locator(".message-row.bot-row").last.get_by_test_id("bot").first


def last_usage(page: Page):
    return page.locator(".message-row.bot-row").last.get_by_test_id("bot").filter(
        has_text="finish:")



def completion_tokens(usage: str) -> int:
    found = re.search(r"(\d+) tokens ·", usage)
    assert found, f"no completion count in the usage line {usage!r}"
    return int(found.group(1))


# --- chat --------------------------------------------------------------------
def test_chat_reply_streams_then_shows_usage(page, slow_steps):
    chat_settings(page, max_new_tokens=48)
    send(page, "Hello! Tell me about the moon.")
    lengths: list[int] = []
    stale_status: set[str] = set()  # a "Loading…" line left up while the reply streams
    deadline = time.monotonic() + MODEL_WAIT_MS / 1000
    state = None
    while time.monotonic() < deadline:
        state = last_reply_state(page)
        if state and state["text"] not in ("", "…"):
            if not lengths or len(state["text"]) != lengths[-1]:
                lengths.append(len(state["text"]))
            if "Loading" in (state["status"] or ""):
                stale_status.add(state["status"])
        if state and state["usage"]:
            break
        time.sleep(0.05)
    assert state and state["usage"], f"no usage line under the reply in time; saw {state}"
    assert lengths == sorted(lengths), f"the reply shrank while streaming: {lengths}"
    assert len(set(lengths)) >= 3, f"the reply did not grow while streaming: {lengths}"
    assert not stale_status, f"the status still said {stale_status} while the reply streamed"

    usage = last_usage(page)
    expect(usage).to_contain_text("tok/s")
    expect(usage).to_contain_text(re.compile(r"finish: (stop|length)"))
    expect(page.locator("#chat-context-meter")).to_contain_text(re.compile(r"Context: \d+ / [\d,]+ tokens"))
    expect(last_reply(page)).not_to_have_text("")
    expect(page.get_by_role("button", name="Send", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="Stop", exact=True)).to_be_hidden()
    screenshot(page, "chat")


def test_stop_ends_a_long_reply(page, slow_steps):
    chat_settings(page, max_new_tokens=512)  # the slider's maximum
    baseline = live_generation_threads()
    send(page, "Write a long story about a dragon.")
    stop = page.get_by_role("button", name="Stop", exact=True)
    expect(stop).to_be_visible()
    expect(last_reply(page)).to_have_text(re.compile(r"\w+\W+\w+\W+\w+"), timeout=MODEL_WAIT_MS)
    stop.click()

    expect(last_usage(page)).to_contain_text("finish: cancelled")
    expect(page.get_by_role("button", name="Send", exact=True)).to_be_visible()
    expect(stop).to_be_hidden()
    stopped = last_reply_state(page)
    assert stopped["text"].strip(), "the reply written before Stop should stay"
    assert wait_for_generations(baseline, timeout_s=30) == baseline, "a generate thread outlived Stop"
    # No thread is left to write more: the reply is as it was when it stopped.
    assert last_reply_state(page) == stopped, "the reply changed after it was stopped"
    assert completion_tokens(stopped["usage"]) < 512
    screenshot(page, "chat-stopped")


def test_retry_replaces_the_last_reply(page):
    chat_settings(page, max_new_tokens=32)
    send(page, "Name three colours.")
    expect(last_usage(page)).to_contain_text("tok/s", timeout=MODEL_WAIT_MS)
    first_text = last_reply(page).inner_text()
    first_tokens = completion_tokens(last_usage(page).inner_text())
    assert first_tokens > 6, f"the first reply is too short to tell a retry from it: {first_text!r}"

    chat_settings(page, max_new_tokens=6)  # so the new reply is recognisably another one
    page.get_by_role("button", name="Retry").click()
    usage = last_usage(page)
    expect(usage).to_contain_text("6 tokens ", timeout=MODEL_WAIT_MS)
    expect(usage).to_contain_text("finish: length")
    expect(usage).to_contain_text("tok/s")
    expect(last_reply(page)).not_to_have_text(first_text)
    expect(page.locator(".message-row.bot-row")).to_have_count(1)  # replaced, not added
    expect(page.get_by_test_id("user")).to_have_count(1)
    expect(page.get_by_test_id("user")).to_have_text("Name three colours.")
    screenshot(page, "chat-retried")


# --- the other tabs ------------------------------------------------------------
def test_translation_works_and_a_missing_model_says_how_to_add_it(page):
    panel = open_tab(page, "Translation")
    direction = panel.get_by_role("combobox", name="Direction")
    expect(direction).to_have_value("Chinese → English")
    panel.get_by_role("textbox", name="Text", exact=True).fill("你好。今天天气很好。")
    panel.get_by_role("button", name="Translate", exact=True).click()
    output = textarea(panel, "Translation")
    expect(output).to_have_value(re.compile(r"\S"))  # the tiny model writes gibberish
    screenshot(page, "translation")

    direction.click()
    page.get_by_role("option", name="English → French").click()
    expect(direction).to_have_value("English → French")
    expect(panel).to_contain_text("PLAYGROUND_TRANSLATION_EN_FR")  # the model note
    panel.get_by_role("textbox", name="Text", exact=True).fill("Good morning. The weather is nice.")
    panel.get_by_role("button", name="Translate", exact=True).click()
    toast = page.locator('[data-testid="toast-body"].error')
    expect(toast).to_be_visible()
    message = toast.get_by_test_id("toast-text")
    expect(message).to_contain_text("is not on this machine")
    expect(message).to_contain_text("Hugging Face Hub cannot be reached")
    expect(message).to_contain_text("PLAYGROUND_TRANSLATION_EN_FR")
    expect(toast).to_have_css("opacity", "1")  # faded in, so the screenshot shows it
    screenshot(page, "translation-offline-error")


def test_sentiment_zero_shot_scores_both_labels(page):
    panel = open_tab(page, "Sentiment")
    expect(panel.get_by_role("radio", name="Zero-shot (chat model, your labels)")).to_be_checked()
    expect(panel.get_by_role("checkbox", name=re.compile("^Explain"))).to_be_disabled()
    panel.get_by_role("textbox", name="Labels, comma-separated").fill("positive, negative")
    text = panel.get_by_role("textbox", name="Text", exact=True)
    text.fill("I loved this film, it was wonderful.")
    panel.get_by_role("button", name="Analyse", exact=True).click()
    for label in ("positive", "negative"):
        score = panel.get_by_role("button", name=re.compile(rf"^{label} \d+(\.\d+)?%$"))
        expect(score).to_be_visible(timeout=MODEL_WAIT_MS)
        expect(score.get_by_role("meter")).to_be_visible()
    expect(panel.get_by_role("heading", name=re.compile("^(positive|negative)$"))).to_be_visible()
    expect(panel.locator("#sentiment-notice")).to_contain_text("Before calibration")
    screenshot(page, "sentiment")


def test_explorer_scores_and_steps_forward(page):
    panel = open_tab(page, "Next-token explorer")
    expect(panel.get_by_role("textbox", name="Prompt")).to_have_value("The capital of France is")
    panel.get_by_role("button", name="Score the next token").click()
    chips = panel.locator('span[title^="token "]')
    expect(chips.first).to_be_visible(timeout=MODEL_WAIT_MS)
    prompt_tokens = chips.count()
    assert prompt_tokens >= 5, f"expected a chip per token, got {prompt_tokens}"
    candidates = panel.get_by_role("grid", name=re.compile("^Candidates"))
    expect(candidates.get_by_role("row")).to_have_count(11)  # the header and 10 candidates
    greedy_token = candidates.get_by_role("row").nth(1).get_by_role("gridcell").nth(1).inner_text()
    assert greedy_token.strip(), "the top candidate has no token"

    steps = panel.get_by_role("grid", name="Steps taken")
    expect(steps.get_by_role("row")).to_have_count(1)  # the header only
    panel.get_by_role("button", name="Append the greedy token").click()
    expect(steps.get_by_role("row")).to_have_count(2)
    step = steps.get_by_role("row").nth(1)
    expect(step).to_contain_text("greedy")
    expect(step.get_by_role("gridcell").nth(1)).to_have_text(greedy_token)
    expect(chips).to_have_count(prompt_tokens + 1)  # the appended token has its chip
    screenshot(page, "explorer")
