"""A browser's chat reply as saved conversations pile up.

    HF_HUB_OFFLINE=1 python -m benchmarks.page_history [--saved 0,5,10,20] [--replies 2]

Starts `python app.py` (offline, the embedded model, a free loopback port) and drives
its page in headless Chromium (`/usr/bin/chromium`, as the browser tests do). One
browser profile saves conversations one by one through the page (each a default
256-token reply, with the tokens' alternatives kept for branching); at each count in
`--saved` it times a few more replies: Enter to the first reply text on screen, Enter to
the finished stats line, and the CPU seconds Chromium and the server spent on each.

Gradio's frontend deep-copies the value of every component an event has touched on
each streaming update, the saved-conversation store included, so the store's shape
decides whether a reply slows down as conversations pile up
(modules/tasks/chat/conversations.py). Chromium runs on the server's cores here, so
its CPU also slows the server's decoding; on a user's own machine it would not.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

from benchmarks.start_to_first_token import _wait_for_page, app_on_free_port
from modules.engine.cpu_profile import cpu_model

CHROMIUM = Path("/usr/bin/chromium")
PROMPT = "Write a long story about a brave little dragon who learns to fly."
REPLY_TIMEOUT_MS = 120_000
# Notes each change of the last reply's text: (ms since the page's clock started, length).
WATCH_REPLY = """() => {
  window.__reply = [];
  const note = () => {
    const rows = document.querySelectorAll('.message-row.bot-row');
    const part = rows.length ? rows[rows.length - 1].querySelector('[data-testid="bot"]') : null;
    const length = part ? part.innerText.trim().length : 0;
    const last = window.__reply.length ? window.__reply[window.__reply.length - 1][1] : -1;
    if (length !== last) window.__reply.push([performance.now(), length]);
  };
  if (window.__watching) window.__watching.disconnect();  // one observer, however many replies
  window.__watching = new MutationObserver(note);
  window.__watching.observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


@dataclass(frozen=True)
class Reply:
    first_text_s: float
    done_s: float
    browser_cpu_s: float
    server_cpu_s: float


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def chromium_processes() -> list[psutil.Process]:
    """The browser's processes (its renderers run as /usr/lib/chromium/chromium --type=…)."""
    return [p for p in psutil.process_iter(["name", "cmdline"])
            if "chromium" in (p.info["name"] or "") or "chromium" in ((p.info["cmdline"] or [""])[0])]


def send_reply(page, server: psutil.Process) -> Reply:
    """A new chat with PROMPT, timed until its stats line shows."""
    from playwright.sync_api import expect

    page.locator("#chat-new").click()
    expect(page.locator(".message-row.bot-row")).to_have_count(0)
    box = page.get_by_placeholder("Type a message")
    box.fill(PROMPT)
    page.evaluate(WATCH_REPLY)
    browsers = chromium_processes()
    browser_cpu, server_cpu = cpu_seconds(browsers), cpu_seconds([server])
    sent = page.evaluate("() => performance.now()")
    box.press("Enter")
    finished = page.locator(".message-row.bot-row").last.get_by_test_id("bot").filter(has_text="finish:")
    expect(finished).to_be_visible(timeout=REPLY_TIMEOUT_MS)
    done = page.evaluate("() => performance.now()")
    texts = [at for at, length in page.evaluate("() => window.__reply") if length > 1]  # "…" first
    return Reply((texts[0] - sent) / 1e3 if texts else float("nan"), (done - sent) / 1e3,
                 cpu_seconds(browsers) - browser_cpu, cpu_seconds([server]) - server_cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saved", default="0,5,10,20")
    parser.add_argument("--replies", type=int, default=2)
    args = parser.parse_args()
    if not CHROMIUM.exists():
        sys.exit(f"{CHROMIUM} is missing: apt-get install -y chromium")
    from playwright.sync_api import expect, sync_playwright

    with app_on_free_port() as (base, process, started):
        _wait_for_page(base, started, process)
        server = psutil.Process(process.pid)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                                 args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_context().new_page()
            page.goto(base + "/")
            expect(page.get_by_placeholder("Type a message")).to_be_visible(timeout=REPLY_TIMEOUT_MS)
            send_reply(page, server)  # loads the model; saved, so it counts as one
            saved, rows = 1, []
            for target in sorted(int(n) for n in args.saved.split(",")):
                while saved < target:
                    send_reply(page, server)
                    saved += 1
                replies = [send_reply(page, server) for _ in range(args.replies)]
                stored = page.evaluate("() => Object.values(localStorage).reduce((n, v) => n + v.length, 0)")
                rows.append((saved, stored, replies))
                saved += args.replies
            browser.close()
    print(f"CPU: {cpu_model()}, torch {torch.backends.cpu.get_cpu_capability()}; the page's default reply "
          f"(256 tokens), median of {args.replies}; Chromium on the same cores")
    print("| saved conversations | localStorage (chars) | first text (s) | reply done (s) "
          "| Chromium CPU (s) | server CPU (s) |")
    print("|---|---|---|---|---|---|")
    for saved, stored, replies in rows:
        median = {field: statistics.median(getattr(r, field) for r in replies) for field in Reply.__annotations__}
        print(f"| {saved} | {stored:,} | {median['first_text_s']:.2f} | {median['done_s']:.2f} "
              f"| {median['browser_cpu_s']:.2f} | {median['server_cpu_s']:.2f} |")


if __name__ == "__main__":
    main()
