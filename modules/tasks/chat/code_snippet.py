"""Copy as code: a runnable Python script that reproduces a chat turn outside the app,
with transformers, the model's chat template, the same generation settings and seed.

It shows the two levels people learn in order: a pipeline first, then the
low-level `generate` with a streamer (what the app itself does).
"""

from __future__ import annotations

import json

from modules.config import EMBEDDED_MODEL
from modules.tasks.chat.params import GenerationParams

# The embedded model is a GGUF conversion of this Hub model.
EMBEDDED_HUB_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def code_snippet(model: str, messages: list[dict[str, str]], params: GenerationParams) -> str:
    """The script for `messages` (ending with the user's turn) on `model` with `params`."""
    model_id = EMBEDDED_HUB_MODEL if model == EMBEDDED_MODEL else model
    settings = {"max_new_tokens": params.max_new_tokens, "do_sample": params.samples,
                "repetition_penalty": params.repetition_penalty}
    if params.samples:
        settings.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
    template = {}
    if params.enable_thinking is not None:
        template["enable_thinking"] = params.enable_thinking
    seed = (f"set_seed({params.seed})  # the same seed as in the app" if params.seed is not None
            else "# The app drew a random seed: set one (set_seed(0)) to make sampled replies repeat.")
    template_args = "".join(f", {key}={value!r}" for key, value in template.items())
    return f'''# Reproduces this chat turn with transformers (pip install transformers torch).
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TextStreamer, pipeline, set_seed

model_id = {model_id!r}
messages = {json.dumps(messages, ensure_ascii=False, indent=4)}
settings = {json.dumps(settings, indent=4).replace("true", "True").replace("false", "False")}

# 1. The quickest way: a text-generation pipeline applies the chat template for you.
{seed}
chat = pipeline("text-generation", model=model_id)
print(chat(messages, **settings)[0]["generated_text"][-1]["content"])

# 2. What happens inside: render the chat template, then generate, streaming the reply.
tokenizer = AutoTokenizer.from_pretrained(model_id)
model = AutoModelForCausalLM.from_pretrained(model_id)
input_ids = tokenizer.apply_chat_template(
    messages, add_generation_prompt=True, return_tensors="pt", return_dict=False{template_args}
)
{seed}
streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
with torch.inference_mode():
    model.generate(input_ids, attention_mask=torch.ones_like(input_ids), streamer=streamer, **settings)
'''
