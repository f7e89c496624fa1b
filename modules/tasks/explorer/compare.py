"""Two next-token distributions side by side, and how far apart they are (KL divergence).

Two prompts on one model (' good' vs 'good'), or one prompt on two models that
share a vocabulary: KL needs the same tokens on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from modules.engine.model_cache import LoadedModel
from modules.errors import InvalidInputError
from modules.messages import message
from modules.tasks import next_token as nt

@dataclass(frozen=True)
class Comparison:
    left: nt.Distribution
    right: nt.Distribution
    kl_left_right_bits: float  # KL(left ‖ right): bits lost describing left with right
    kl_right_left_bits: float

    def as_dict(self) -> dict:
        return {"left": self.left.as_dict(), "right": self.right.as_dict(),
                "kl_left_right_bits": self.kl_left_right_bits, "kl_right_left_bits": self.kl_right_left_bits}

def kl_bits(p_logits: torch.Tensor, q_logits: torch.Tensor) -> float:
    """KL(p ‖ q) in bits, from logits (temperature 1)."""
    p_log, q_log = p_logits.float().log_softmax(-1), q_logits.float().log_softmax(-1)
    return float((p_log.exp() * (p_log - q_log)).sum() / nt.LN2)

def same_vocabulary(left: LoadedModel, right: LoadedModel) -> bool:
    return left is right or left.tokenizer.get_vocab() == right.tokenizer.get_vocab()

def compare(
    left: LoadedModel, left_ids: list[int], right: LoadedModel, right_ids: list[int],
    settings: nt.SamplingSettings = nt.SamplingSettings(), shown: int = 10,
) -> Comparison:
    """Top candidates of both, and the KL divergence both ways between the raw distributions."""
    if not same_vocabulary(left, right):
        raise InvalidInputError(message("explorer.different_vocabularies", left=left.name, right=right.name))
    left_logits, right_logits = nt.next_token_logits(left, left_ids), nt.next_token_logits(right, right_ids)
    size = min(left_logits.shape[-1], right_logits.shape[-1])  # heads may be padded past the vocabulary
    left_logits, right_logits = left_logits[:size], right_logits[:size]
    return Comparison(
        left=nt.distribution_from_logits(left_logits, left.tokenizer, settings, shown),
        right=nt.distribution_from_logits(right_logits, right.tokenizer, settings, shown),
        kl_left_right_bits=kl_bits(left_logits, right_logits),
        kl_right_left_bits=kl_bits(right_logits, left_logits),
    )

