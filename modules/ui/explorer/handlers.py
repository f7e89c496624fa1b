"""The explorer's event handlers: component values in, tasks called, views out.

Per-user state is one `ExplorerSession` (tasks/explorer/session.py) in a gr.State:
the prompt, its branches and the active walk with its KV cache. The model is the
chat tab's, shared through the cache. Sliders redraw from the stored scores; the
lens, attention, beams and compare run a pass only when asked.
"""

from __future__ import annotations

from collections.abc import Callable

import gradio as gr

from modules.app_context import AppContext
from modules.engine.gpu import gpu
from modules.engine.model_cache import LoadedModel, ModelKind
from modules.tasks import next_token as nt
from modules.tasks.validation import is_whole
from modules.tasks.explorer import attention, beam_search, compare, logit_lens, sampling_stages, scoring, session
from modules.ui.errors import shows_user_errors, user_error
from modules.ui.explorer import views
from modules.ui.i18n import in_reader_language, t
from modules.messages import Message

Walk = session.ExplorerSession | None
ALL_HEADS = "mean of heads"


def settings_of(temperature, top_k, top_p, min_p) -> nt.SamplingSettings:
    return nt.SamplingSettings(temperature, top_k, top_p, min_p).validated()


def whole(value) -> int:
    """A whole number from a component (a table cell may arrive as text)."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if value is None or not is_whole(value):
        raise user_error(Message("errors.not_whole_value", {"value": repr(value)}))
    return int(value)


class ExplorerHandlers:
    """Everything the tab's events call, built once per app with its context."""

    def __init__(self, context: AppContext) -> None:
        self.context = context
        self.max_input_tokens = context.settings.max_input_tokens

    # --- state ------------------------------------------------------------------------
    def load(self, ref: str, progress: gr.Progress | None = None) -> LoadedModel:
        status = (lambda message: progress(0, desc=in_reader_language(message))) if progress else None
        return self.context.cache.get(ref, ModelKind.CAUSAL_LM, on_status=status)

    def session_for(self, walk: Walk, prompt, chat, ref, progress=None) -> tuple[session.ExplorerSession, LoadedModel]:
        """The current session, or a fresh one (old cache dropped) if the prompt or model changed."""
        loaded = self.load(ref, progress)
        if walk is None or walk.key != (prompt, bool(chat), loaded.ref.text):
            walk = session.new_session(loaded, prompt, bool(chat), self.max_input_tokens)
        return walk, loaded

    def active_walk(self, walk: Walk) -> tuple[session.ExplorerSession, LoadedModel]:
        if walk is None:
            raise user_error(Message("explorer.score_a_prompt_first"))
        return walk, self.load(walk.model_ref)

    # --- views ------------------------------------------------------------------------
    def distribution_views(self, walk, loaded, shown, temperature, top_k, top_p, min_p) -> tuple:
        settings = nt.SamplingSettings(temperature, top_k, top_p, min_p)
        logits = walk.explorer.logits
        dist = nt.distribution_from_logits(logits, loaded.tokenizer, settings, shown)
        stages = sampling_stages.sampling_stages(logits, loaded.tokenizer, settings, shown)
        return (views.summary_markdown(walk.explorer, dist) + views.model_note(loaded),
                views.chart_frame(dist), views.table_frame(dist), views.stages_html(stages),
                views.sweep_frame(sampling_stages.temperature_sweep(logits)))

    def all_views(self, walk, loaded, *knobs) -> tuple:
        explorer, tokenizer = walk.explorer, loaded.tokenizer
        summary, chart, table, stages, sweep = self.distribution_views(walk, loaded, *knobs)
        surprise, perplexity = views.surprise_views(explorer, tokenizer)
        return (walk, views.chips_html(explorer, tokenizer), summary, chart, table,
                views.text_so_far(explorer, tokenizer), views.history_frame(explorer), surprise, perplexity,
                stages, sweep, views.branches_markdown(walk, loaded),
                gr.update(choices=list(walk.branches), value=walk.active))

    # --- scoring and stepping ---------------------------------------------------------------
    def analyse(self, prompt, chat, ref, *knobs, progress=gr.Progress()):
        walk, loaded = self.session_for(None, prompt, chat, ref, progress)
        return self.all_views(walk, loaded, *knobs)

    def rescore_if_changed(self, walk, prompt, chat, ref, *knobs, progress=gr.Progress()):
        walk, loaded = self.session_for(walk, prompt, chat, ref, progress)
        return self.all_views(walk, loaded, *knobs)

    def first_show(self, walk, prompt, chat, ref, *knobs, progress=gr.Progress()):
        """Score the example the first time the tab is shown; later visits keep what is there."""
        if walk is not None:
            return (gr.skip(),) * 13
        return self.analyse(prompt, chat, ref, *knobs, progress=progress)

    def redraw(self, walk, *knobs):
        if walk is None:
            return (gr.skip(),) * 5
        return self.distribution_views(walk, self.load(walk.model_ref), *knobs)

    def stepper(self, action: Callable[..., None]) -> Callable:
        def handler(walk, prompt, chat, ref, shown, temperature, top_k, top_p, min_p, seed, steps, how,
                    progress=gr.Progress()):
            walk, loaded = self.session_for(walk, prompt, chat, ref, progress)
            settings = settings_of(temperature, top_k, top_p, min_p)
            with walk.explorer.lock:
                action(walk.explorer, loaded, settings, whole(seed), steps, how)
            return self.all_views(walk, loaded, shown, temperature, top_k, top_p, min_p)

        return handler

    @staticmethod
    def step_n(explorer, loaded, settings, seed, steps, how):
        eos = loaded.tokenizer.eos_token_id
        nt.take_steps(loaded, explorer, whole(steps), how, settings, seed, [] if eos is None else [eos])

    @staticmethod
    def step_one(strategy: str) -> Callable[..., None]:
        def action(explorer, loaded, settings, seed, steps, how):
            nt.take_steps(loaded, explorer, 1, strategy, settings, seed)

        return action

    @staticmethod
    def undo_step(explorer, loaded, settings, seed, steps, how):
        nt.undo(loaded, explorer)

    def pick(self, walk, prompt, chat, ref, shown, temperature, top_k, top_p, min_p, evt: gr.SelectData):
        """A clicked candidate starts a new branch; the text it was picked from stays as it was."""
        walk, loaded = self.session_for(walk, prompt, chat, ref)
        row = evt.row_value or []
        if len(row) < len(views.TABLE_HEADERS):
            raise user_error(Message("explorer.click_a_row_of_the_candidates_table"))
        token_id = whole(row[views.TABLE_HEADERS.index("id")])
        with walk.explorer.lock:
            session.fork(loaded, walk, token_id, settings_of(temperature, top_k, top_p, min_p))
        return self.all_views(walk, loaded, shown, temperature, top_k, top_p, min_p)

    def switch_branch(self, walk, name, *knobs):
        walk, loaded = self.active_walk(walk)
        if name and name != walk.active:
            with walk.explorer.lock:
                session.switch(loaded, walk, name)
        return self.all_views(walk, loaded, *knobs)

    # --- the views that run a pass when asked -------------------------------------------------
    def lens(self, walk, follow: str, top):
        walk, loaded = self.active_walk(walk)
        chosen = None
        if follow:
            ids = loaded.tokenizer(follow, add_special_tokens=False)["input_ids"]
            if not ids:
                raise user_error(Message("explorer.that_token_text_has_no_tokens"))
            chosen = ids[0]
        result = logit_lens.logit_lens(loaded, walk.explorer.ids, chosen, whole(top))
        return views.lens_markdown(result, loaded), views.lens_html(result), views.lens_frame(result)

    def attention(self, walk, head):
        walk, loaded = self.active_walk(walk)
        picked = None if head in (None, "", ALL_HEADS) else whole(head)
        result = attention.attention(loaded, walk.explorer.ids, picked)
        heads = [(t("explorer.mean_of_heads"), ALL_HEADS), *((str(n), str(n)) for n in range(result.heads))]
        return (views.attention_markdown(result, loaded), views.attention_html(result),
                gr.update(choices=heads, value=head or ALL_HEADS))

    def beams(self, walk, num_beams, length, length_penalty, temperature, top_k, top_p, min_p, seed):
        walk, loaded = self.active_walk(walk)
        result = beam_search.beam_search(loaded, walk.explorer.ids, num_beams, length, length_penalty,
                                         settings_of(temperature, top_k, top_p, min_p), whole(seed))
        return views.beams_markdown(result, loaded), views.beam_tree_html(result), views.beams_frame(result)

    def score(self, walk, continuation):
        walk, loaded = self.active_walk(walk)
        result = scoring.score_continuation(loaded, walk.explorer.ids, continuation, self.max_input_tokens)
        return views.score_views(result, loaded)

    def paste_surprise(self, ref, text):
        loaded = self.load(ref)
        return views.score_views(scoring.text_surprise(loaded, text, self.max_input_tokens), loaded)

    def compare(self, prompt, chat, ref, second_prompt, second_ref, shown):
        left = self.load(ref)
        right = self.load(second_ref or ref)
        left_ids = nt.encode_prompt(left, prompt, bool(chat), self.max_input_tokens)
        right_ids = nt.encode_prompt(right, second_prompt, bool(chat), self.max_input_tokens)
        result = compare.compare(left, left_ids, right, right_ids, shown=whole(shown))
        return views.compare_views(result, left, right)

    # --- export and replay -----------------------------------------------------------------------
    def export(self, walk):
        walk, _ = self.active_walk(walk)
        return session.export_session(walk)

    def replay(self, text, *knobs, progress=gr.Progress()):
        model = session.read_session(text).get("model")
        loaded = self.load(str(model), progress)
        walk = session.replay_session(loaded, text, self.max_input_tokens)
        return (*self.all_views(walk, loaded, *knobs), walk.prompt, walk.chat_template, walk.model_ref)


def wrap(handler: Callable, runs_model: bool = True) -> Callable:
    """A handler as the tab calls it: PlaygroundErrors become toasts; model work under @gpu."""
    return shows_user_errors(gpu(handler) if runs_model else handler)
