"""The chat tab's round trips in a real browser (Playwright + Debian's Chromium): a
conversation survives a reload and a server restart; edit, retry and switch variants.

The server runs in this process with the embedded SmolLM2-135M-Instruct (offline), on a
fixed port so that a restarted server is the same origin (the browser's saved chats are
kept per origin). Screenshots go to artifacts/screenshots/ (see tests/test_browser.py).
"""

from __future__ import annotations

import contextlib
import re

import pytest
from playwright.sync_api import Page, expect

from modules.app_context import AppContext
from modules.config import EMBEDDED_MODEL
from modules.ui.layout import build_demo
from tests.conftest import free_port, make_settings
from tests.test_browser import (  # noqa: F401 - fixtures and helpers shared with the other tabs
    MODEL_WAIT_MS,
    browser,
    chat_settings,
    last_reply,
    last_usage,
    screenshot,
    send,
)


@contextlib.contextmanager
def running_app(cache, port: int):
    """The page served on `port` (a restart builds everything again, as a new process would)."""
    context = AppContext.create(make_settings(), cache)
    assert context.chat_model.ref == EMBEDDED_MODEL
    demo = build_demo(context)
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        yield demo.local_url
    finally:
        demo.close()


@pytest.fixture
def tab(browser, shared_cache):  # noqa: F811 - the fixture imported above
    """A browser page on a fresh server; `tab.restart()` restarts the server on the same port."""
    port = free_port()
    stack = contextlib.ExitStack()
    url = stack.enter_context(running_app(shared_cache, port))
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    expect(page.locator("#active-model")).to_contain_text(EMBEDDED_MODEL)

    def restart() -> None:
        stack.close()
        stack.enter_context(running_app(shared_cache, port))

    page.restart = restart
    yield page
    context.close()
    stack.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def wait_for_reply(page: Page) -> None:
    expect(last_usage(page)).to_contain_text("finish:", timeout=MODEL_WAIT_MS)


def saved(page: Page):
    return page.locator("#chat-conversations")


def test_a_conversation_survives_reload_and_server_restart(tab):
    chat_settings(tab, max_new_tokens=8)
    send(tab, "Remember the word PINEAPPLE.")
    wait_for_reply(tab)
    reply = last_reply(tab).inner_text()
    expect(saved(tab)).to_contain_text("Remember the word PINEAPPLE.")

    tab.reload()
    expect(tab.get_by_test_id("user").last).to_have_text("Remember the word PINEAPPLE.")
    expect(last_reply(tab)).to_have_text(reply)
    screenshot(tab, "chat-after-reload")

    tab.restart()
    tab.reload()
    expect(tab.get_by_test_id("user").last).to_have_text("Remember the word PINEAPPLE.")
    expect(last_usage(tab)).to_contain_text("finish:")
    expect(saved(tab)).to_contain_text("Remember the word PINEAPPLE.")
    screenshot(tab, "chat-after-restart")


def test_retry_keeps_variants_and_switches_between_them(tab):
    chat_settings(tab, max_new_tokens=12)
    send(tab, "Name three colours.")
    wait_for_reply(tab)
    first = last_reply(tab).inner_text()
    chat_settings(tab, max_new_tokens=4)  # so the new reply is recognisably another one
    tab.get_by_role("button", name="Retry").click()
    expect(last_usage(tab)).to_contain_text("‹ 2/2 ›", timeout=MODEL_WAIT_MS)
    expect(last_usage(tab)).to_contain_text("finish:")
    second = last_reply(tab).inner_text()
    assert second != first
    tab.get_by_role("button", name="‹ Previous reply").click()
    expect(last_usage(tab)).to_contain_text("‹ 1/2 ›")
    expect(last_reply(tab)).to_have_text(first)
    screenshot(tab, "chat-variants")
    tab.reload()  # the variants are saved too
    expect(last_usage(tab)).to_contain_text("‹ 1/2 ›")
    tab.get_by_role("button", name="Next reply ›").click()
    expect(last_reply(tab)).to_have_text(second)


def test_edit_a_user_message_regenerates_from_there(tab):
    chat_settings(tab, max_new_tokens=6)
    send(tab, "What is the capital of Spain?")
    wait_for_reply(tab)
    user = tab.get_by_test_id("user").last
    user.hover()
    tab.get_by_role("button", name=re.compile("edit", re.I)).first.click()
    box = tab.locator("#chat-conversation textarea").first
    box.fill("What is the capital of France?")
    tab.get_by_role("button", name=re.compile("submit", re.I)).first.click()
    expect(tab.get_by_test_id("user").last).to_have_text("What is the capital of France?")
    expect(last_reply(tab)).to_contain_text("Paris", timeout=MODEL_WAIT_MS)
    expect(tab.get_by_test_id("user")).to_have_count(1)
    screenshot(tab, "chat-edited")


def test_branch_from_a_token(tab):
    chat_settings(tab, max_new_tokens=8)
    send(tab, "What is the capital of France?")
    wait_for_reply(tab)
    first = last_reply(tab).inner_text()
    tab.get_by_text("Branch from a token").click()
    tokens = tab.locator("#chat-tokens .token")
    expect(tokens.first).to_be_visible()
    tokens.nth(1).click()
    options = tab.locator("#chat-alternatives label")
    expect(options).to_have_count(5)
    options.nth(1).click()
    tab.get_by_role("button", name="Branch from here").click()
    expect(last_usage(tab)).to_contain_text("‹ 2/2 ›", timeout=MODEL_WAIT_MS)
    expect(last_usage(tab)).to_contain_text("finish:")
    assert last_reply(tab).inner_text() != first
    tab.get_by_role("checkbox", name="Colour tokens by probability").check()
    expect(tab.locator("#chat-tokens .text:not(.unlabeled)").first).to_be_visible()  # coloured
    tab.get_by_role("checkbox", name="Colour tokens by probability").uncheck()
    expect(tab.locator("#chat-tokens .text:not(.unlabeled)")).to_have_count(0)
    screenshot(tab, "chat-branched")


def test_export_then_import(tab, tmp_path):
    chat_settings(tab, max_new_tokens=6)
    send(tab, "Please export this conversation.")
    wait_for_reply(tab)
    reply = last_reply(tab).inner_text()
    tab.get_by_text("Inspect the prompt, export, import").click()
    tab.get_by_label("JSON").check()
    tab.get_by_role("button", name="Export this conversation").click()
    link = tab.locator("#chat-exported a").first
    expect(link).to_be_visible()
    with tab.expect_download() as download:
        link.click()
    exported = tmp_path / "conversation.json"
    download.value.save_as(exported)
    assert '"Please export this conversation."' in exported.read_text(encoding="utf-8")

    tab.get_by_role("button", name="New chat").click()
    expect(tab.get_by_test_id("user")).to_have_count(0)
    with tab.expect_file_chooser() as chooser:
        tab.get_by_role("button", name="Import a JSON conversation").click()
    chooser.value.set_files(str(exported))
    expect(tab.get_by_test_id("user").last).to_have_text("Please export this conversation.")
    expect(last_reply(tab)).to_have_text(reply)
    expect(saved(tab).locator("label")).to_have_count(2)  # the original and the imported copy
    screenshot(tab, "chat-imported")
