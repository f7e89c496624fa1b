"""Settings come from defaults, then environment variables, then flags."""

import pytest

from modules.config import DEFAULT_CHAT_MODEL, Settings, default_page_updates, parse_auth


def test_defaults_are_the_documented_models():
    settings = Settings.from_env({})
    assert settings.chat_model == DEFAULT_CHAT_MODEL == "Qwen/Qwen2.5-0.5B-Instruct"
    assert settings.sentiment_model == "distilbert-base-uncased-finetuned-sst-2-english"
    assert settings.translation_models["zh-en"] == "Helsinki-NLP/opus-mt-zh-en"
    assert {"en-zh", "en-fr", "fr-en", "en-de", "de-en", "ja-en"} <= set(settings.translation_models)
    assert (settings.host, settings.port, settings.offline, settings.share) == ("127.0.0.1", 7860, False, False)


def test_environment_overrides_each_model_and_limit():
    env = {
        "PLAYGROUND_CHAT_MODEL": "/models/chat",
        "PLAYGROUND_SENTIMENT_MODEL": "/models/sst2",
        "PLAYGROUND_TRANSLATION_ZH_EN": "/models/zh-en",
        "PLAYGROUND_TRANSLATION_KO_EN": "/models/ko-en",
        "PLAYGROUND_MAX_NEW_TOKENS": "64",
        "PLAYGROUND_PORT": "9000",
        "HF_HUB_OFFLINE": "1",
    }
    settings = Settings.from_env(env)
    assert settings.chat_model == "/models/chat"
    assert settings.sentiment_model == "/models/sst2"
    assert settings.translation_models["zh-en"] == "/models/zh-en"
    assert settings.translation_models["ko-en"] == "/models/ko-en"
    assert settings.max_new_tokens == 64 and settings.port == 9000 and settings.offline


def test_flags_override_environment():
    settings = Settings.from_args(
        ["--port", "8000", "--share", "--auth", "ann:s3:cret", "--offline"],
        env={"PLAYGROUND_PORT": "9000"},
    )
    assert settings.port == 8000 and settings.share and settings.offline
    assert settings.auth == ("ann", "s3:cret")


def test_secrets_are_not_in_the_repr():
    settings = Settings.from_env(
        {"PLAYGROUND_AUTH": "ann:hunter2", "PLAYGROUND_API_KEY": "sk-secret"}
    )
    assert settings.auth == ("ann", "hunter2") and settings.api_key == "sk-secret"
    assert "hunter2" not in repr(settings) and "sk-secret" not in repr(settings)


@pytest.mark.parametrize("bad", ["nopassword", ":pw", "user:"])
def test_bad_auth_is_refused(bad):
    with pytest.raises(Exception, match="USER:PASSWORD"):
        parse_auth(bad)


def test_bad_number_in_environment_names_the_variable():
    with pytest.raises(SystemExit, match="PLAYGROUND_PORT"):
        Settings.from_env({"PLAYGROUND_PORT": "eighty"})


def test_page_updates_a_second_a_setting_else_by_the_machines_size():
    from modules.ui.chat.handlers import _update_interval

    assert Settings.from_env({}).page_updates_per_s is None
    assert default_page_updates(2) == default_page_updates(4) == 10.0 and default_page_updates(8) == 20.0
    chosen = Settings.from_env({"PLAYGROUND_PAGE_UPDATES_PER_S": "4"})
    assert chosen.page_updates_per_s == 4.0 and _update_interval(chosen) == 0.25  # no reply streaming here
    assert _update_interval(Settings()) == 1 / default_page_updates()
    for bad in ("0", "-3", "fast", "inf", "nan"):
        with pytest.raises(SystemExit, match="PLAYGROUND_PAGE_UPDATES_PER_S must be a number above 0"):
            Settings.from_env({"PLAYGROUND_PAGE_UPDATES_PER_S": bad})


# --- where to listen: flags > PLAYGROUND_* > GRADIO_SERVER_* > PORT > defaults ---------------
SPACE = {"SYSTEM": "spaces", "SPACE_ID": "ann/playground", "SPACE_HOST": "ann-playground.hf.space"}


@pytest.mark.parametrize(
    ("env", "argv", "expected"),
    [
        ({}, [], ("127.0.0.1", 7860)),
        ({"PORT": "8080"}, [], ("127.0.0.1", 8080)),
        ({"PORT": "8080", "GRADIO_SERVER_PORT": "7000", "GRADIO_SERVER_NAME": "0.0.0.0"}, [],
         ("0.0.0.0", 7000)),
        ({"GRADIO_SERVER_PORT": "7000", "GRADIO_SERVER_NAME": "0.0.0.0",
          "PLAYGROUND_PORT": "9000", "PLAYGROUND_HOST": "10.0.0.5"}, [], ("10.0.0.5", 9000)),
        ({"PLAYGROUND_PORT": "9000", "PLAYGROUND_HOST": "10.0.0.5"},
         ["--port", "8001", "--host", "127.0.0.2"], ("127.0.0.2", 8001)),
        (SPACE, [], ("0.0.0.0", 7860)),
        ({**SPACE, "GRADIO_SERVER_NAME": "::", "GRADIO_SERVER_PORT": "7861"}, [], ("::", 7861)),
    ],
)
def test_host_and_port_follow_the_platforms_conventions(env, argv, expected):
    settings = Settings.from_args(argv, env=env)
    assert (settings.host, settings.port) == expected


def test_a_space_never_shares_and_knows_its_public_url():
    settings = Settings.from_args(["--share"], env={**SPACE, "PLAYGROUND_SHARE": "1"})
    assert settings.on_spaces and not settings.share
    assert settings.public_url == "https://ann-playground.hf.space"
    assert Settings.from_env({**SPACE, "PLAYGROUND_SHARE": "1"}).share is False
    elsewhere = Settings.from_args(["--share"], env={"SPACE_HOST": "ann-playground.hf.space"})
    assert elsewhere.share and not elsewhere.on_spaces and elsewhere.public_url is None


def test_bad_port_names_the_variable_it_came_from():
    with pytest.raises(SystemExit, match="GRADIO_SERVER_PORT"):
        Settings.from_env({"GRADIO_SERVER_PORT": "http"})
