"""The next-token explorer tab: lay out (explorer/layout.py), then wire events to handlers.

Views and handlers live in modules/ui/explorer/; the logic in modules/tasks/next_token.py
and modules/tasks/explorer/. Events named explorer_* are the page's own (private);
the public endpoints are in modules/ui/explorer/api.py.
"""

from __future__ import annotations

import gradio as gr
from gradio.context import get_render_context

from modules.app_context import AppContext
from modules.ui.explorer import api
from modules.ui.explorer.handlers import ExplorerHandlers, wrap
from modules.ui.explorer.layout import ExplorerLayout, build_layout
from modules.ui.explorer.views import TABLE_HEADERS

__all__ = ["build", "TABLE_HEADERS"]


def build(context: AppContext) -> None:
    tab = get_render_context()
    ui = build_layout(context)
    handlers = ExplorerHandlers(context)
    _wire_scoring(ui, handlers, tab)
    _wire_views(ui, handlers)
    api.register(context)


def _everything(ui: ExplorerLayout) -> list:
    """What a new score or step redraws, in ExplorerHandlers.all_views' order."""
    return [ui.session, ui.chips, ui.summary, ui.chart, ui.table, ui.text, ui.history, ui.surprise,
            ui.perplexity, ui.stages, ui.sweep, ui.branches, ui.branch]


def _private(name: str) -> dict:
    return {"api_name": name, "api_visibility": "private"}


def _wire_scoring(ui: ExplorerLayout, handlers: ExplorerHandlers, tab) -> None:
    everything, knobs = _everything(ui), ui.knobs
    source = [ui.prompt, ui.chat, ui.model]
    gr.on([ui.score.click, ui.prompt.submit], wrap(handlers.analyse), inputs=[*source, *knobs],
          outputs=everything, **_private("explorer_score"))
    gr.on([ui.chat.change, ui.model.change], wrap(handlers.rescore_if_changed),
          inputs=[ui.session, *source, *knobs], outputs=everything, **_private("explorer_rescore"))
    if isinstance(tab, gr.Tab):  # open on a result: score the example the first time the tab shows
        tab.select(wrap(handlers.first_show), inputs=[ui.session, *source, *knobs], outputs=everything,
                   **_private("explorer_first_show"))
    gr.on([knob.change for knob in knobs], wrap(handlers.redraw, runs_model=False), inputs=[ui.session, *knobs],
          outputs=[ui.summary, ui.chart, ui.table, ui.stages, ui.sweep], show_progress="hidden",
          trigger_mode="always_last", **_private("explorer_redraw"))
    step_inputs = [ui.session, *source, *knobs, ui.seed, ui.steps, ui.how]
    for button, action, name in [
        (ui.greedy, handlers.step_one("greedy"), "explorer_greedy"),
        (ui.sample, handlers.step_one("sample"), "explorer_sample"),
        (ui.run_n, handlers.step_n, "explorer_steps"), (ui.undo, handlers.undo_step, "explorer_undo"),
    ]:
        button.click(wrap(handlers.stepper(action)), inputs=step_inputs, outputs=everything, **_private(name))
    ui.table.select(wrap(handlers.pick), inputs=[ui.session, *source, *knobs], outputs=everything,
                    **_private("explorer_pick"))
    ui.branch.input(wrap(handlers.switch_branch), inputs=[ui.session, ui.branch, *knobs], outputs=everything,
                    **_private("explorer_switch_branch"))


def _wire_views(ui: ExplorerLayout, handlers: ExplorerHandlers) -> None:
    """The views that run a pass do so on their button, or when their panel is opened."""
    lens = {"fn": wrap(handlers.lens), "inputs": [ui.session, ui.lens_follow, ui.lens_top],
            "outputs": [ui.lens_summary, ui.lens_heatmap, ui.lens_line]}
    gr.on([ui.lens_run.click, ui.lens_open.expand, ui.lens_follow.submit], **lens, **_private("explorer_lens"))
    attention = {"fn": wrap(handlers.attention), "inputs": [ui.session, ui.attention_head],
                 "outputs": [ui.attention_summary, ui.attention_heatmap, ui.attention_head]}
    gr.on([ui.attention_run.click, ui.attention_open.expand, ui.attention_head.input], **attention,
          **_private("explorer_attention"))
    ui.beams_run.click(wrap(handlers.beams), inputs=[ui.session, ui.num_beams, ui.beam_length, ui.length_penalty,
                                                     *ui.knobs[1:], ui.seed],
                       outputs=[ui.beam_summary, ui.beam_tree, ui.beam_table], **_private("explorer_beams"))
    score_outputs = [ui.score_summary, ui.score_tokens, ui.score_table]
    gr.on([ui.score_run.click, ui.continuation.submit], wrap(handlers.score),
          inputs=[ui.session, ui.continuation], outputs=score_outputs, **_private("explorer_score_continuation"))
    ui.pasted_run.click(wrap(handlers.paste_surprise), inputs=[ui.model, ui.pasted], outputs=score_outputs,
                        **_private("explorer_text_surprise"))
    ui.compare_run.click(wrap(handlers.compare),
                         inputs=[ui.prompt, ui.chat, ui.model, ui.second_prompt, ui.second_model, ui.knobs[0]],
                         outputs=[ui.compare_summary, ui.compare_left, ui.compare_right],
                         **_private("explorer_compare"))
    ui.export.click(wrap(handlers.export, runs_model=False), inputs=[ui.session], outputs=[ui.session_json],
                    **_private("explorer_export"))
    ui.replay.click(wrap(handlers.replay), inputs=[ui.session_json, *ui.knobs],
                    outputs=[*_everything(ui), ui.prompt, ui.chat, ui.model], **_private("explorer_replay"))
