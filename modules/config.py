"""All settings in one place: defaults, environment variables, command-line flags.

Every setting has an environment variable (so a Space can set it) and most have a
flag (so `python app.py --share` works). Settings are an immutable value passed to
whoever needs them; nothing here holds mutable global state.

Where to listen follows the platforms' conventions, first found wins: our flags,
PLAYGROUND_HOST / PLAYGROUND_PORT, GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (set by a
Hugging Face Space), PORT (Cloud Run, Heroku, Render), then the defaults, which are
0.0.0.0:7860 on a Space (SYSTEM=spaces) and 127.0.0.1:7860 elsewhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

VERSION = "0.2.0"  # reported by GET /health; bump with each release

EMBEDDED_MODEL = "embedded:SmolLM2-135M-Instruct"
DEFAULT_CHAT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
DEFAULT_SENTIMENT_MODEL = "distilbert-base-uncased-finetuned-sst-2-english"

# Direction "src-tgt" -> opus-mt model. Each can be overridden with
# PLAYGROUND_TRANSLATION_<SRC>_<TGT> (e.g. PLAYGROUND_TRANSLATION_ZH_EN=/models/zh-en).
DEFAULT_TRANSLATION_MODELS: dict[str, str] = {
    "zh-en": "Helsinki-NLP/opus-mt-zh-en",
    "en-zh": "Helsinki-NLP/opus-mt-en-zh",
    "en-fr": "Helsinki-NLP/opus-mt-en-fr",
    "fr-en": "Helsinki-NLP/opus-mt-fr-en",
    "en-de": "Helsinki-NLP/opus-mt-en-de",
    "de-en": "Helsinki-NLP/opus-mt-de-en",
    "ja-en": "Helsinki-NLP/opus-mt-ja-en",
}

ENV_PREFIX = "PLAYGROUND_"
TRUE_WORDS = {"1", "true", "yes", "on"}


def _flag(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    value = env.get(name)
    return default if value is None else value.strip().lower() in TRUE_WORDS


def _positive_float(env: Mapping[str, str], name: str) -> float | None:
    value = env.get(name)
    if value is None or not value.strip():
        return None
    try:
        number = float(value)
        if 0 < number < float("inf"):  # nan fails both comparisons
            return number
    except ValueError:
        pass
    raise SystemExit(f"{name} must be a number above 0, got {value!r}")


def default_page_updates(cpus: int | None = None) -> float:
    """Page updates a second for a streaming reply where none is set: 10 on a machine of up
    to four CPUs, 20 on bigger ones. Each update costs the server a few ms of Python and
    the browser a render. On two cores a reply streamed at 154-180 tok/s with 10 updates a
    second against 122-145 with 20, the browser on the same machine (a local user), and
    at 253 against 237 tok/s to a browser elsewhere (README, *Chat*)."""
    cpus = (os.cpu_count() or 1) if cpus is None else cpus
    return 10.0 if cpus <= 4 else 20.0


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name)
    if value is None or not value.strip():
        return default
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"{name} must be a whole number, got {value!r}") from None


def _on_spaces(env: Mapping[str, str]) -> bool:
    """A Hugging Face Space sets SYSTEM=spaces for the app it runs."""
    return env.get("SYSTEM", "").strip().lower() == "spaces"


def _host(env: Mapping[str, str]) -> str:
    for name in (ENV_PREFIX + "HOST", "GRADIO_SERVER_NAME"):
        if env.get(name, "").strip():
            return env[name].strip()
    return "0.0.0.0" if _on_spaces(env) else "127.0.0.1"


def _port(env: Mapping[str, str]) -> int:
    for name in (ENV_PREFIX + "PORT", "GRADIO_SERVER_PORT", "PORT"):
        if env.get(name, "").strip():
            return _int(env, name, 7860)
    return 7860


def _public_url(env: Mapping[str, str]) -> str | None:
    """The Space's own address (SPACE_HOST, e.g. user-name.hf.space), where users reach it."""
    host = env.get("SPACE_HOST", "").strip() if _on_spaces(env) else ""
    return f"https://{host}" if host else None


def _translation_models(env: Mapping[str, str]) -> dict[str, str]:
    models = dict(DEFAULT_TRANSLATION_MODELS)
    for key, value in env.items():
        if key.startswith(ENV_PREFIX + "TRANSLATION_") and value.strip():
            pair = key.removeprefix(ENV_PREFIX + "TRANSLATION_").lower().split("_")
            if len(pair) == 2 and all(pair):
                models["-".join(pair)] = value.strip()
    return models


@dataclass(frozen=True)
class Settings:
    """What the app runs with. Build with `from_env` or `from_args`."""

    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    auth: tuple[str, str] | None = field(default=None, repr=False)
    offline: bool = False
    chat_model: str = DEFAULT_CHAT_MODEL
    sentiment_model: str = DEFAULT_SENTIMENT_MODEL
    translation_models: Mapping[str, str] = field(
        default_factory=lambda: dict(DEFAULT_TRANSLATION_MODELS)
    )
    extra_chat_models: tuple[str, ...] = ()
    device: str = "auto"
    dtype: str = "auto"
    max_new_tokens: int = 512
    max_input_tokens: int = 4096
    max_loaded_models: int = 4
    cache_dir: str = os.path.join(os.path.expanduser("~"), ".cache", "transformers-playground")
    trust_remote_code: frozenset[str] = frozenset()
    concurrency_limit: int = 1
    # Sequences one chat model generates at once, in one batch (modules/engine/batching.py),
    # and the KV-cache tokens (prompt + max new tokens each) they may reserve together.
    batch_size: int = 4
    kv_cache_tokens: int = 8192
    # Keys and values of recent prompts and replies that later prompts may start from
    # (modules/engine/prefix_cache.py), per chat model; 0 turns it off.
    prefix_cache_mb: int = 256
    max_queue_size: int = 64
    # How often a streaming chat reply updates the page, per second, shared by the replies
    # streaming at once (None: default_page_updates()).
    page_updates_per_s: float | None = None
    # The /v1 API's key (None: open). Never logged or shown.
    api_key: str | None = field(default=None, repr=False)
    # An OpenAI-compatible server (vLLM, TGI, llama.cpp, Ollama) to chat through instead.
    remote_base_url: str | None = None
    remote_api_key: str | None = field(default=None, repr=False)
    remote_model: str | None = None
    # CPU chat models: the kernels and dtypes this machine's SpeedPlan picked (modules/engine/cpu_profile.py,
    # modules/engine/kernels/fast_decode.py). PLAYGROUND_FAST_DECODE=0 turns it off.
    fast_decode: bool = True
    # Their decode steps through one native call, compiled here for this CPU (needs a C++
    # compiler; modules/engine/kernels/native_step.py). PLAYGROUND_NATIVE_STEP=0 turns it off.
    native_step: bool = True
    # On CPUs with AMX-BF16, that step's int4 layers on AMX tiles (a second copy of the 4-bit
    # weights; modules/engine/kernels/native_step.py). PLAYGROUND_AMX=0 keeps torch's int4 kernel.
    amx: bool = True
    # Without AMX (any CPU with AVX2): those layers multiply int16-rounded rows with integer
    # instructions (AVX512-VNNI, AVX-VNNI or AVX2; the same weights' copy).
    # PLAYGROUND_INT16_ROWS=0 keeps torch's int4 kernel.
    int16_rows: bool = True
    # Started by a Hugging Face Space: no share link (the Space has its own public URL).
    on_spaces: bool = False
    # The address users reach this app at when it differs from host:port (a Space's URL).
    public_url: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from PLAYGROUND_* variables (and HF_HUB_OFFLINE)."""
        env = os.environ if env is None else env
        defaults = cls()
        auth = env.get(ENV_PREFIX + "AUTH")
        extra = env.get(ENV_PREFIX + "CHAT_MODELS", "")
        trusted = env.get(ENV_PREFIX + "TRUST_REMOTE_CODE", "")
        return cls(
            host=_host(env),
            port=_port(env),
            share=_flag(env, ENV_PREFIX + "SHARE") and not _on_spaces(env),
            auth=parse_auth(auth) if auth else None,
            offline=_flag(env, ENV_PREFIX + "OFFLINE") or _flag(env, "HF_HUB_OFFLINE"),
            chat_model=env.get(ENV_PREFIX + "CHAT_MODEL", "").strip() or defaults.chat_model,
            sentiment_model=env.get(ENV_PREFIX + "SENTIMENT_MODEL", "").strip()
            or defaults.sentiment_model,
            translation_models=_translation_models(env),
            extra_chat_models=tuple(m.strip() for m in extra.split(",") if m.strip()),
            device=env.get(ENV_PREFIX + "DEVICE", defaults.device),
            dtype=env.get(ENV_PREFIX + "DTYPE", defaults.dtype),
            max_new_tokens=_int(env, ENV_PREFIX + "MAX_NEW_TOKENS", defaults.max_new_tokens),
            max_input_tokens=_int(env, ENV_PREFIX + "MAX_INPUT_TOKENS", defaults.max_input_tokens),
            max_loaded_models=_int(
                env, ENV_PREFIX + "MAX_LOADED_MODELS", defaults.max_loaded_models
            ),
            cache_dir=env.get(ENV_PREFIX + "CACHE_DIR", defaults.cache_dir),
            trust_remote_code=frozenset(m.strip() for m in trusted.split(",") if m.strip()),
            concurrency_limit=_int(env, ENV_PREFIX + "CONCURRENCY", defaults.concurrency_limit),
            max_queue_size=_int(env, ENV_PREFIX + "MAX_QUEUE", defaults.max_queue_size),
            page_updates_per_s=_positive_float(env, ENV_PREFIX + "PAGE_UPDATES_PER_S"),
            batch_size=_int(env, ENV_PREFIX + "BATCH_SIZE", defaults.batch_size),
            kv_cache_tokens=_int(env, ENV_PREFIX + "KV_CACHE_TOKENS", defaults.kv_cache_tokens),
            prefix_cache_mb=_int(env, ENV_PREFIX + "PREFIX_CACHE_MB", defaults.prefix_cache_mb),
            api_key=env.get(ENV_PREFIX + "API_KEY") or None,
            remote_base_url=env.get(ENV_PREFIX + "REMOTE_BASE_URL") or None,
            remote_api_key=env.get(ENV_PREFIX + "REMOTE_API_KEY") or None,
            remote_model=env.get(ENV_PREFIX + "REMOTE_MODEL") or None,
            fast_decode=_flag(env, ENV_PREFIX + "FAST_DECODE", defaults.fast_decode),
            native_step=_flag(env, ENV_PREFIX + "NATIVE_STEP", defaults.native_step),
            amx=_flag(env, ENV_PREFIX + "AMX", defaults.amx),
            int16_rows=_flag(env, ENV_PREFIX + "INT16_ROWS", defaults.int16_rows),
            on_spaces=_on_spaces(env),
            public_url=_public_url(env),
        )

    @classmethod
    def from_args(
        cls, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> Settings:
        """Flags override the environment, which overrides the defaults.

        On a Space there is never a share link, whatever was asked."""
        base = cls.from_env(env)
        parser = argparse.ArgumentParser(
            prog="app.py", description="Transformers Playground: open models, run locally."
        )
        parser.add_argument("--host", default=base.host, help="address to listen on")
        parser.add_argument("--port", type=int, default=base.port)
        parser.add_argument(
            "--share", action="store_true", default=base.share, help="public share link"
        )
        parser.add_argument(
            "--auth", metavar="USER:PASS", type=parse_auth, default=base.auth,
            help="require a login (protect a shared link)",
        )
        parser.add_argument(
            "--offline", action="store_true", default=base.offline,
            help="never touch the Hugging Face Hub",
        )
        parser.add_argument("--chat-model", default=base.chat_model)
        parser.add_argument("--sentiment-model", default=base.sentiment_model)
        parser.add_argument("--device", default=base.device, help="auto, cpu, cuda or mps")
        parser.add_argument("--dtype", default=base.dtype, help="auto, float32 or bfloat16")
        parser.add_argument(
            "--api-key", default=base.api_key, help="require this key on the /v1 API"
        )
        parser.add_argument(
            "--remote-base-url", default=base.remote_base_url,
            help="chat through an OpenAI-compatible server instead of a local model",
        )
        parser.add_argument("--remote-model", default=base.remote_model)
        args = parser.parse_args(list(argv))
        if base.on_spaces:
            args.share = False
        return dataclasses.replace(base, **vars(args))


def parse_auth(value: str) -> tuple[str, str]:
    """'user:pass' -> ('user', 'pass'); the password may itself hold ':'."""
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise argparse.ArgumentTypeError("auth must look like USER:PASSWORD")
    return user, password
