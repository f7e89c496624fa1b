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
KNOBS = (10, 1.0, 0, 1.0)  # shown, temperature, top_k, top_p


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
    summary, chart, table = handler(demo, "explorer_redraw")(session, 10, 0.5, 3, 1.0)
    third_best = session.explorer.logits.sort(descending=True).values[2]
    kept = int((session.explorer.logits >= third_best).sum())  # ties with the 3rd stay
    assert list(table["top-k"]) == ["✓"] * kept + ["✗"] * (10 - kept)
    assert list(chart["status"]) == ["kept"] * kept + ["cut by top-k"] * (10 - kept)
    assert sum(table["sampled p"]) == pytest.approx(1.0, abs=1e-3)
    assert f"**{kept}** token(s) left" in summary
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
     (PROMPT, (10, 0.0, 0, 1.0), "Temperature"), (PROMPT, (10, 1.0, 0, 0.0), "top-p")],
)
def test_bad_input_becomes_a_gradio_error(demo, tiny_ref, prompt, knobs, message):
    with pytest.raises(gr.Error, match=message):
        handler(demo, "explorer_score")(prompt, False, tiny_ref, *knobs, progress=None)


def test_an_unknown_model_is_a_clear_error(demo):
    with pytest.raises(gr.Error):
        handler(demo, "explorer_score")(PROMPT, False, "/no/such/model/folder", *KNOBS, progress=None)


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
        assert result["kept"] == 4 and result["model"] == tiny.ref.text

        with pytest.raises(Exception, match="Type a prompt"):
            client.predict("   ", api_name="/next_token")
        with pytest.raises(Exception, match="Temperature"):
            client.predict(PROMPT, temperature=-1.0, api_name="/next_token")
        again = client.predict(PROMPT, api_name="/next_token")  # still serving
        assert len(again["candidates"]) == 10
    finally:
        demo.close()
