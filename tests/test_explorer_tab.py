"""The explorer tab: its handlers on the tiny model, and /next_token through gradio_client."""

from __future__ import annotations


import gradio as gr
import pytest
from gradio_client import Client

from modules.app_context import AppContext
from modules.tasks import next_token as nt
from modules.engine.model_cache import ModelKind
from modules.ui.explorer_tab import TABLE_HEADERS
from modules.ui.layout import build_demo
from tests.conftest import free_port, make_settings

PROMPT = "The quick brown fox"
KNOBS = (10, 1.0, 0, 1.0, 0.0)  # shown, temperature, top_k, top_p, min_p


@pytest.fixture(scope="module")
def tiny(shared_cache, tiny_causal_lm_dir):
    return shared_cache.get(str(tiny_causal_lm_dir), ModelKind.CAUSAL_LM)


@pytest.fixture(scope="module")
def demo(shared_cache, tiny, tiny_causal_lm_dir):
    return build_demo(AppContext.create(make_settings(chat_model=str(tiny_causal_lm_dir)), shared_cache))


def handler(demo, api_name):
    [fn] = [f.fn for f in demo.fns.values() if f.api_name == api_name]
    return fn



def ids_in_table(table) -> list[int]:
    return [int(i) for i in table["id"]]


# --- handlers -----------------------------------------------------------------
def test_explorer_uses_the_chat_model_from_the_shared_cache(demo, shared_cache, tiny):
    loads = shared_cache.loads
    ref = tiny.ref.text
    session, chips, summary, chart, table, *_ = handler(demo, "explorer_score")(
        PROMPT, False, ref, *KNOBS, progress=None
    )
    assert shared_cache.loads == loads  # no second copy
    assert session.explorer.model_ref == tiny.ref.text
    expected = nt.next_token_distribution(tiny, PROMPT, shown=10)
    assert ids_in_table(table) == [c.id for c in expected.candidates]
    assert list(table["probability"]) == pytest.approx([c.probability for c in expected.candidates], abs=1e-4)
    for token_id in session.explorer.ids:
        assert f">{token_id}<" in chips  # every id under its chip
    assert f"{len(session.explorer.ids)} tokens" in summary
    assert tiny.description in summary and "quantized" in summary  # int8 on CPU: said so
    assert len(chart) == 10 and set(chart["status"]) == {"kept"}


def test_sliders_redraw_from_the_stored_scores(demo, tiny):
    ref = tiny.ref.text
    session = handler(demo, "explorer_score")(PROMPT, False, ref, *KNOBS, progress=None)[0]
    summary, chart, table, stages, sweep = handler(demo, "explorer_redraw")(session, 10, 0.5, 3, 1.0, 0.0)
    third_best = session.explorer.logits.sort(descending=True).values[2]
    kept = int((session.explorer.logits >= third_best).sum())  # ties with the 3rd stay
    assert list(table["top-k"]) == ["✓"] * kept + ["✗"] * (10 - kept)
    assert list(chart["status"]) == ["kept"] * kept + ["cut by top-k"] * (10 - kept)
    assert sum(table["sampled p"]) == pytest.approx(1.0, abs=1e-3)
    assert f"**{kept}** token(s) left" in summary
    assert stages.count('class="removed"') == 10 - kept and stages.count('class="kept"') == kept
    assert list(sweep["temperature"])[0] == 0.2 and list(sweep["temperature"])[-1] == 2.0
    assert handler(demo, "explorer_redraw")(None, *KNOBS)[0] is not None  # nothing scored yet: no error


def test_greedy_pick_and_undo_steps(demo, tiny):
    ref = tiny.ref.text
    outputs = handler(demo, "explorer_score")(PROMPT, False, ref, *KNOBS, progress=None)
    session, table = outputs[0], outputs[4]
    step_args = (PROMPT, False, ref, *KNOBS, 0, 3, "greedy")

    greedy = handler(demo, "explorer_greedy")(session, *step_args, progress=None)
    history = greedy[6]
    assert list(history["id"]) == [ids_in_table(table)[0]] and list(history["rank"]) == [1]

    row = greedy[4].iloc[2].tolist()  # click the third candidate
    select = gr.SelectData(None, {"index": [2, 1], "value": row[1], "row_value": row})
    picked = handler(demo, "explorer_pick")(session, PROMPT, False, ref, *KNOBS, select)
    assert session.explorer.ids[-1] == int(row[TABLE_HEADERS.index("id")])
    assert list(picked[6]["how"]) == ["greedy", "picked"] and list(picked[6]["rank"])[-1] == 3
    assert picked[5][-1][1] == "generated"
    assert session.active == "b1" and picked[12]["choices"] == ["main", "b1"]  # the click made a branch
    assert "forks after step 1" in picked[11]

    back = handler(demo, "explorer_switch_branch")(session, "main", *KNOBS)
    assert list(back[6]["how"]) == ["greedy"] and session.active == "main"
    handler(demo, "explorer_switch_branch")(session, "b1", *KNOBS)

    handler(demo, "explorer_undo")(session, *step_args, progress=None)
    handler(demo, "explorer_steps")(session, *step_args, progress=None)
    assert len(session.explorer.steps) == 4


def test_a_new_prompt_starts_a_new_walk(demo, tiny_ref):
    ref = tiny_ref
    session = handler(demo, "explorer_score")(PROMPT, False, ref, *KNOBS, progress=None)[0]
    old = session.explorer
    outputs = handler(demo, "explorer_greedy")(session, "Hello", False, ref, *KNOBS, 0, 1, "greedy", progress=None)
    assert outputs[0].explorer is not old and len(outputs[0].explorer.prompt_ids) < len(old.prompt_ids)


@pytest.mark.parametrize(
    ("prompt", "knobs", "message"),
    [("", KNOBS, "Type a prompt"), ("word " * 400, KNOBS, "reads at most"),
     (PROMPT, (10, 0.0, 0, 1.0, 0.0), "Temperature"), (PROMPT, (10, 1.0, 0, 0.0, 0.0), "top-p"),
     (PROMPT, (10, 1.0, 0, 1.0, 2.0), "min-p")],
)
def test_bad_input_becomes_a_gradio_error(demo, tiny_ref, prompt, knobs, message):
    with pytest.raises(gr.Error, match=message):
        handler(demo, "explorer_score")(prompt, False, tiny_ref, *knobs, progress=None)


def test_an_unknown_model_is_a_clear_error(demo):
    with pytest.raises(gr.Error):
        handler(demo, "explorer_score")(PROMPT, False, "/no/such/model/folder", *KNOBS, progress=None)


def test_views_that_run_a_pass(demo, tiny):
    session = handler(demo, "explorer_score")(PROMPT, False, tiny.ref.text, *KNOBS, progress=None)[0]
    summary, heatmap, line = handler(demo, "explorer_lens")(session, "", 5)
    assert len(line) == tiny.model.config.num_hidden_layers + 1 and "logit-lens" in heatmap
    assert list(line["rank"])[-1] == 1
    beams, tree, table = handler(demo, "explorer_beams")(session, 3, 4, 1.0, 1.0, 0, 1.0, 0.0, 0)
    assert tiny.description in beams
    assert list(table["beam"]) == ["beam 1", "beam 2", "beam 3", "greedy", "sampled"] and "dropped" in tree
    summary, tokens, scores = handler(demo, "explorer_score_continuation")(session, " fox")
    assert "p = " in summary and tiny.description in summary and len(scores) == len(tiny.tokenizer(" fox", add_special_tokens=False)["input_ids"])
    summary, left, right = handler(demo, "explorer_compare")("i am good", False, tiny.ref.text, "i am good ", "", 5)
    assert "KL(prompt A ‖ prompt B)" in summary and len(left) == len(right) == 5
    summary, heatmap, _ = handler(demo, "explorer_attention")(session, "mean of heads")  # fused CPU layers
    assert tiny.description in summary and 'class="attention"' in heatmap
    with pytest.raises(gr.Error, match="Beams must be"):
        handler(demo, "explorer_beams")(session, 0, 4, 1.0, 1.0, 0, 1.0, 0.0, 0)
    with pytest.raises(gr.Error, match="Type a continuation"):
        handler(demo, "explorer_score_continuation")(session, "")
    with pytest.raises(gr.Error, match="Score a prompt first"):
        handler(demo, "explorer_lens")(None, "", 5)


def test_export_and_replay_through_the_tab(demo, tiny):
    ref = tiny.ref.text
    session = handler(demo, "explorer_score")(PROMPT, False, ref, *KNOBS, progress=None)[0]
    handler(demo, "explorer_sample")(session, PROMPT, False, ref, *KNOBS, 5, 1, "sample", progress=None)
    exported = handler(demo, "explorer_export")(session)
    *views, prompt, chat, model = handler(demo, "explorer_replay")(exported, *KNOBS, progress=None)
    assert views[0].explorer.ids == session.explorer.ids and (prompt, chat, model) == (PROMPT, False, ref)
    with pytest.raises(gr.Error, match="not JSON"):
        handler(demo, "explorer_replay")("{oops", *KNOBS, progress=None)


def test_first_show_scores_the_example_once(demo, tiny):
    outputs = handler(demo, "explorer_first_show")(None, "The capital of France is", False, tiny.ref.text, *KNOBS,
                                                   progress=None)
    assert outputs[0] is not None and len(outputs[4]) == 10
    again = handler(demo, "explorer_first_show")(outputs[0], "ignored", False, tiny.ref.text, *KNOBS, progress=None)
    assert all(isinstance(value, type(gr.skip())) for value in again)


# --- the API --------------------------------------------------------------------
def test_next_token_endpoint_through_gradio_client(demo, tiny):
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        result = client.predict(PROMPT, temperature=0.8, top_k=4, candidates=6, api_name="/next_token")
        expected = nt.next_token_distribution(tiny, PROMPT, temperature=0.8, top_k=4, shown=6)
        assert [c["id"] for c in result["candidates"]] == [c.id for c in expected.candidates]
        for got, want in zip(result["candidates"], expected.candidates, strict=True):
            assert got["token"] == want.token
            assert got["probability"] == pytest.approx(want.probability, abs=1e-6)
            assert got["logit"] == pytest.approx(want.logit, abs=1e-4)
        # top-k keeps 4, or more where bf16 scores tie with the 4th (seen on AVX2 machines)
        assert result["kept"] == expected.kept >= 4 and result["model"] == tiny.ref.text

        with pytest.raises(Exception, match="Type a prompt"):
            client.predict("   ", api_name="/next_token")
        with pytest.raises(Exception, match="Temperature"):
            client.predict(PROMPT, temperature=-1.0, api_name="/next_token")
        again = client.predict(PROMPT, api_name="/next_token")  # still serving
        assert len(again["candidates"]) == 10

        stages = client.predict(PROMPT, top_k=3, min_p=0.1, api_name="/sampling_stages")
        assert stages["stages"] == ["raw", "÷ temperature", "top-k", "top-p", "min-p"]
        assert len(stages["temperature_sweep"]) == 19
        lens = client.predict(PROMPT, api_name="/logit_lens")
        assert len(lens["layers"]) == tiny.model.config.num_hidden_layers + 1
        beams = client.predict(PROMPT, num_beams=2, length=3, api_name="/beam_search")
        assert len(beams["beams"]) == 2 and beams["greedy"]["token_ids"]
        scored = client.predict(PROMPT, " jumps", api_name="/score_continuation")
        assert 0 < scored["probability"] <= 1
        compared = client.predict("i am good", "i am good ", api_name="/compare")
        assert compared["kl_left_right_bits"] > 0
        with pytest.raises(Exception, match="Beams must be"):
            client.predict(PROMPT, num_beams=9, api_name="/beam_search")
        attended = client.predict(PROMPT, api_name="/attention")  # from the fused layers' own kernel
        assert attended["layers"] == tiny.model.config.num_hidden_layers
        assert all(sum(row) == pytest.approx(1.0, abs=1e-3) for row in attended["weights"])
    finally:
        demo.close()
