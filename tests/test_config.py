"""Settings come from defaults, then environment variables, then flags."""

import pytest

from modules.config import DEFAULT_CHAT_MODEL, Settings, parse_auth


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
