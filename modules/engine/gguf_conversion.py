"""Turn a GGUF file into a normal safetensors folder, once.

transformers dequantizes GGUF weights on every load (~20 s for SmolLM2-135M on
2 cores) and refuses to `save_pretrained` a GGUF-loaded model. Copying the state
dict into a model built from the same config and saving that gives a folder that
reloads in a fraction of a second, so we pay the conversion only on first use.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from modules.engine.callbacks import StatusCallback
from modules.messages import message


def converted_folder(gguf_file: Path, cache_dir: str | Path) -> Path:
    """Where the converted copy of this exact file (path, size, mtime) lives."""
    stat = gguf_file.stat()
    key = f"{gguf_file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(cache_dir) / "converted" / f"{gguf_file.stem}-{digest}"


def is_converted(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def ensure_converted(
    gguf_file: Path, cache_dir: str | Path, on_status: StatusCallback | None = None
) -> Path:
    """Return a safetensors folder for `gguf_file`, converting it if not done yet.

    The folder is written under a temporary name and renamed into place, so a
    crash or a second process never sees half a model.
    """
    target = converted_folder(gguf_file, cache_dir)
    if is_converted(target):
        return target
    if on_status:
        on_status(message("models.converting_gguf", file=gguf_file.name).english())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        _convert(gguf_file, staging)
        try:
            staging.rename(target)
        except OSError:
            if not is_converted(target):  # not a lost race with another process
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert(gguf_file: Path, out: Path) -> None:
    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    plain.generation_config = gguf_model.generation_config
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
