"""The page in Chinese and in English, chosen by the browser's locale, and the switch.

Same set-up as tests/test_browser.py (Debian's Chromium, the app served in this process,
nothing outside 127.0.0.1). Screenshots: artifacts/screenshots/i18n-*.png.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from modules.app_context import AppContext
from modules.config import DEFAULT_TRANSLATION_MODELS, EMBEDDED_MODEL
from modules.messages import text
from modules.serving.launch import create_app, serve_in_thread
from modules.ui.layout import build_demo
from tests.conftest import make_settings
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, STEP_WAIT_MS, screenshot

expect.set_options(timeout=STEP_WAIT_MS)

TAB_KEYS = ["tabs.chat", "tabs.translation", "tabs.sentiment", "tabs.explorer"]
TRANSLATION_BUTTON_KEYS = ["translation.translate", "translation.swap"]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium`")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def app_url(tiny_marian_dir, shared_cache):
    translation_models = {**DEFAULT_TRANSLATION_MODELS, "zh-en": str(tiny_marian_dir)}
    context = AppContext.create(make_settings(translation_models=translation_models), shared_cache)
    with serve_in_thread(create_app(build_demo(context), context)) as url:
        yield url


def open_page(browser, url: str, locale: str) -> tuple[Page, list[str]]:
    """A fresh browser session in `locale`; the JavaScript errors it raises are collected."""
    context = browser.new_context(locale=locale, viewport={"width": 1280, "height": 900})
    context.route(re.compile(r"^(?!https?://127\.0\.0\.1[:/])"), lambda route: route.abort())
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    expect(page.locator("#active-model")).to_contain_text(EMBEDDED_MODEL)
    return page, errors


def expect_language(page: Page, language: str) -> None:
    """Tabs, the translation tab's main buttons and the server-written header in `language`."""
    for key in TAB_KEYS:
        expect(page.get_by_role("tab", name=text(key, language), exact=True)).to_be_visible()
    page.get_by_role("tab", name=text("tabs.translation", language), exact=True).click()
    for key in TRANSLATION_BUTTON_KEYS:
        expect(page.get_by_role("button", name=text(key, language), exact=True)).to_be_visible()
    expect(page.locator("#active-model")).to_contain_text(text("app.tagline", language))


@pytest.mark.parametrize("locale, language", [("zh-CN", "zh-CN"), ("en-US", "en")])
def test_the_browser_locale_chooses_the_language(browser, app_url, locale, language):
    page, errors = open_page(browser, app_url, locale)
    expect_language(page, language)
    screenshot(page, f"i18n-{locale}")
    for key in ("tabs.chat", "tabs.sentiment", "tabs.explorer"):
        page.get_by_role("tab", name=text(key, language), exact=True).click()
        expect(page.locator("body")).not_to_contain_text("__i18n__")  # no untranslated marker
        screenshot(page, f"i18n-{locale}-{key.split('.')[1]}")
    page.context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def test_the_switch_overrides_the_browser_and_is_remembered(browser, app_url):
    page, errors = open_page(browser, app_url, "en-US")
    expect_language(page, "en")
    page.locator("#language-switch").get_by_text("中文", exact=True).click()
    expect_language(page, "zh-CN")
    page.reload()
    expect_language(page, "zh-CN")  # remembered, though the browser still says en-US
    page.locator("#language-switch").get_by_text("English", exact=True).click()
    expect_language(page, "en")
    page.context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def test_an_error_toast_reads_in_chinese(browser, app_url):
    """A missing model (en-fr is not on this machine) is explained in the reader's language."""
    page, errors = open_page(browser, app_url, "zh-CN")
    page.get_by_role("tab", name="翻译", exact=True).click()
    direction = page.get_by_role("combobox", name="方向")
    direction.click()
    page.get_by_role("option", name="英语 → 法语").click()
    page.get_by_role("textbox", name="原文", exact=True).fill("Good morning. I am good.")
    page.get_by_role("button", name="翻译", exact=True).click()
    toast = page.locator('[data-testid="toast-body"].error')
    expect(toast.get_by_test_id("toast-text")).to_contain_text("不在本机")
    expect(toast.get_by_test_id("toast-text")).to_contain_text("PLAYGROUND_TRANSLATION_EN_FR")
    expect(toast).to_have_css("opacity", "1")  # faded in, so the screenshot shows it
    screenshot(page, "i18n-zh-CN-error")
    page.context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def test_the_switch_fails_soft_when_gradios_locale_module_is_not_found(browser, app_url):
    """Gradio has no public way to change the page's locale: the switch finds its core module
    among the loaded resources. If that lookup fails (a renamed bundle), choosing a
    language raises no error, the browser's language stays on the labels Gradio translates,
    and the server-written texts (header, tab names) still follow the choice."""
    context = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 900})
    context.route(re.compile(r"^(?!https?://127\.0\.0\.1[:/])"), lambda route: route.abort())
    # A later Gradio whose core module no longer exports changeLocale.
    context.route("**/assets/core-changed.js", lambda route: route.fulfill(
        body="export const somethingElse = 1;", content_type="text/javascript"))
    context.add_init_script(
        'performance.getEntriesByType = () => [{name: location.origin + "/assets/core-changed.js"}];')
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda line: problems.append(line.text) if line.type == "error" else None)
    page.goto(app_url)
    expect(page.locator("#active-model")).to_contain_text(text("app.tagline", "en"))
    page.locator("#language-switch").get_by_text("中文", exact=True).click()
    expect(page.locator("#active-model")).to_contain_text(text("app.tagline", "zh-CN"))
    # The tabs are server-written (re-rendered per language); a button is Gradio's to translate.
    page.get_by_role("tab", name=text("tabs.translation", "zh-CN"), exact=True).click()
    expect(page.get_by_role("button", name=text("translation.translate", "en"), exact=True)).to_be_visible()
    context.close()
    assert not problems, f"errors on the page: {problems}"
