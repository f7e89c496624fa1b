"""Branches of one exploration, and the session as JSON that replays exactly.

Picking an alternative forks a branch; the text becomes a small tree. Only the
active branch holds a KV cache: switching re-reads the other branch's text once
(one prefill), which keeps memory to one cache per user.

An exported session holds the prompt, model, and every step with its knobs, seed
and top candidates. Replaying re-runs each step the way it was taken: greedy and
sampled steps are chosen again (same seed, same position, same token) and checked
against the record; picked tokens are appended as recorded.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from modules.engine.model_cache import LoadedModel
from modules.errors import InvalidInputError
from modules.messages import message
from modules.tasks import next_token as nt

FORMAT = "transformers-playground/explorer-session"
VERSION = 1
MAX_BRANCHES = 32
MAX_SESSION_CHARS = 2_000_000


@dataclass
class Branch:
    name: str
    parent: str | None
    fork_at: int  # steps shared with the parent
    steps: list[nt.Step] = field(default_factory=list)


@dataclass
class ExplorerSession:
    """What one browser session explores: the prompt, its branches, and the active walk."""

    model_ref: str
    prompt: str
    chat_template: bool
    explorer: nt.ExplorerState
    branches: dict[str, Branch]
    active: str = "main"

    @property
    def key(self) -> tuple[str, bool, str]:
        return (self.prompt, self.chat_template, self.model_ref)


def new_session(loaded: LoadedModel, prompt: str, chat_template: bool = False,
                max_input_tokens: int | None = None) -> ExplorerSession:
    explorer = nt.start(loaded, prompt, chat_template, max_input_tokens)
    return ExplorerSession(loaded.ref.text, prompt, bool(chat_template), explorer,
                           {"main": Branch("main", None, 0)})


def _sync(session: ExplorerSession) -> None:
    """The active branch's record follows the walk (steps, undo included)."""
    session.branches[session.active].steps = list(session.explorer.steps)


def fork(loaded: LoadedModel, session: ExplorerSession, token_id: int, settings: nt.SamplingSettings) -> Branch:
    """A new branch: the active text plus `token_id`; the old branch stays as it was."""
    if len(session.branches) >= MAX_BRANCHES:
        raise InvalidInputError(message("explorer.too_many_branches", limit=MAX_BRANCHES))
    _sync(session)
    parent = session.active
    shared = len(session.explorer.steps)
    nt.append_token(loaded, session.explorer, token_id, "picked", settings)
    name = f"b{len(session.branches)}"
    session.branches[name] = Branch(name, parent, shared, list(session.explorer.steps))
    session.active = name
    return session.branches[name]


def switch(loaded: LoadedModel, session: ExplorerSession, name: str) -> None:
    """Make another branch active: its text is read once, in one prefill."""
    if name not in session.branches:
        raise InvalidInputError(message("explorer.no_such_branch", name=name, known=", ".join(session.branches)))
    _sync(session)
    branch, explorer = session.branches[name], session.explorer
    ids = [*explorer.prompt_ids, *(step.token_id for step in branch.steps)]
    result = nt.prefill(loaded, ids)
    explorer.ids, explorer.steps = ids, list(branch.steps)
    explorer.logits, explorer.past_key_values = result.logits, result.past_key_values
    session.active = name


def branch_text(loaded: LoadedModel, session: ExplorerSession, name: str) -> str:
    ids = [step.token_id for step in session.branches[name].steps]
    return loaded.tokenizer.decode(ids, skip_special_tokens=False)


# --- export and replay ----------------------------------------------------------------
def export_session(session: ExplorerSession) -> str:
    """The whole session as JSON: enough to replay every branch exactly."""
    _sync(session)
    return json.dumps({
        "format": FORMAT,
        "version": VERSION,
        "model": session.model_ref,
        "prompt": session.prompt,
        "chat_template": session.chat_template,
        "active": session.active,
        "branches": [
            {"name": b.name, "parent": b.parent, "fork_at": b.fork_at, "steps": [asdict(s) for s in b.steps]}
            for b in session.branches.values()
        ],
    }, ensure_ascii=False, indent=1)


def read_session(text: str) -> dict:
    """The parsed JSON of an exported session, or a clear error."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError(message("explorer.session_missing"))
    if len(text) > MAX_SESSION_CHARS:
        raise InvalidInputError(message("explorer.session_too_big", limit=MAX_SESSION_CHARS))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidInputError(message("explorer.session_not_json", problem=error.msg, line=error.lineno)) from error
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InvalidInputError(message("explorer.session_wrong_format"))
    if data.get("version") != VERSION:
        raise InvalidInputError(message("explorer.session_version", version=data.get("version"), supported=VERSION))
    branches = data.get("branches")
    if not isinstance(branches, list) or not branches or not all(isinstance(b, dict) for b in branches):
        raise InvalidInputError(message("explorer.session_no_branches"))
    return data


def _replay_step(loaded: LoadedModel, explorer: nt.ExplorerState, record: dict, number: int) -> None:
    try:
        token_id, how = int(record["token_id"]), record["how"]
        settings = nt.SamplingSettings(**record.get("settings", {})).validated()
        seed = record.get("seed")
    except (KeyError, TypeError, ValueError) as error:
        raise InvalidInputError(message("explorer.session_step_malformed", number=number, problem=error)) from error
    if how in nt.STRATEGIES:
        chosen = nt.choose_token(explorer, how, settings, int(seed or 0))
        if chosen != token_id:
            raise InvalidInputError(message("explorer.replay_differs", number=number, how=how, chosen=chosen,
                                            recorded=token_id))
    nt.append_token(loaded, explorer, token_id, how, settings, seed)


def replay_session(loaded: LoadedModel, text: str, max_input_tokens: int | None = None) -> ExplorerSession:
    """Rebuild an exported session step by step; each branch is checked as it is replayed."""
    data = read_session(text)
    if data.get("model") != loaded.ref.text:
        raise InvalidInputError(message("explorer.session_other_model", model=data.get("model")))
    session = new_session(loaded, str(data.get("prompt", "")), bool(data.get("chat_template")), max_input_tokens)
    start = session.explorer
    for number, raw in enumerate(data["branches"]):
        name, steps = str(raw.get("name", f"b{number}")), raw.get("steps") or []
        # each branch replays from the prompt with its own fresh cache
        explorer = nt.start(loaded, session.prompt, session.chat_template, max_input_tokens) if steps else start
        for index, record in enumerate(steps, start=1):
            if not isinstance(record, dict):
                raise InvalidInputError(message("explorer.session_step_not_object", number=index, branch=name))
            _replay_step(loaded, explorer, record, index)
        session.branches[name] = Branch(name, raw.get("parent"), int(raw.get("fork_at") or 0), explorer.steps)
        if name == data.get("active"):
            session.explorer, session.active = explorer, name
    if session.active not in session.branches:
        session.active = "main"
    return session
