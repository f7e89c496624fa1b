"""The sampling pipeline stage by stage, on stored logits: no model call.

Each stage is one of transformers' own warpers, applied cumulatively in the order
`generate` applies them (temperature, top-k, top-p, min-p); a token removed at a
stage stays removed after it. Also the step's entropy and how it moves with T.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from transformers import (
    LogitsProcessor,
    MinPLogitsWarper,
    PreTrainedTokenizerBase,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from modules.tasks import next_token as nt

STAGES = ("raw", "÷ temperature", "top-k", "top-p", "min-p")
SWEEP_TEMPERATURES = tuple(round(0.2 + 0.1 * i, 1) for i in range(19))  # 0.2 .. 2.0


@dataclass(frozen=True)
class StageRow:
    """One candidate through the pipeline: its probability after each stage (None once removed)."""

    id: int
    token: str
    rank: int
    logit: float
    probabilities: list[float | None]  # one per STAGES entry, renormalised over the survivors
    removed_by: str | None  # the stage that cut it, None if sampling can pick it

    @property
    def raw_probability(self) -> float:
        return self.probabilities[0] or 0.0

    @property
    def final_probability(self) -> float:
        return self.probabilities[-1] or 0.0


@dataclass(frozen=True)
class SamplingStages:
    stages: list[str]
    rows: list[StageRow]
    kept_per_stage: list[int]  # tokens of the whole vocabulary left after each stage
    settings: nt.SamplingSettings

    def as_dict(self) -> dict:
        return {
            "stages": self.stages,
            "kept_per_stage": self.kept_per_stage,
            "settings": asdict(self.settings),
            "candidates": [asdict(row) for row in self.rows],
        }


def stage_warpers(settings: nt.SamplingSettings) -> list[LogitsProcessor | None]:
    """One warper per stage after 'raw', in generate's order; None where a knob is off."""
    s = settings
    return [
        TemperatureLogitsWarper(s.temperature),
        TopKLogitsWarper(top_k=s.top_k) if s.top_k else None,
        TopPLogitsWarper(top_p=s.top_p) if s.top_p < 1.0 else None,
        MinPLogitsWarper(min_p=s.min_p) if s.min_p > 0 else None,
    ]


def _staged_scores(logits: torch.Tensor, settings: nt.SamplingSettings) -> list[torch.Tensor]:
    """The scores after each stage, each stage applied to the one before (as LogitsProcessorList does)."""
    no_ids = torch.zeros((1, 0), dtype=torch.long)
    staged = [logits.reshape(1, -1)]
    for warper in stage_warpers(settings):
        staged.append(staged[-1] if warper is None else warper(no_ids, staged[-1]))
    return [scores[0] for scores in staged]


def sampling_stages(
    logits: torch.Tensor,
    tokenizer: PreTrainedTokenizerBase,
    settings: nt.SamplingSettings = nt.SamplingSettings(),
    shown: int = 10,
) -> SamplingStages:
    """The top `shown` raw candidates and what each warper does to them."""
    settings = settings.validated(logits.shape[-1])
    shown = min(nt.validate_shown(shown), logits.shape[-1])
    logits = logits.float().reshape(-1)
    staged = _staged_scores(logits, settings)
    probabilities = [scores.softmax(-1) for scores in staged]
    order = nt.top_ids(logits, shown)  # the candidates table's order
    rows = []
    for rank, token_id in enumerate(order, start=1):
        alive = [bool(torch.isfinite(scores[token_id])) for scores in staged]
        rows.append(StageRow(
            id=token_id,
            token=nt.token_label(tokenizer, token_id),
            rank=rank,
            logit=float(logits[token_id]),
            probabilities=[float(p[token_id]) if ok else None for p, ok in zip(probabilities, alive, strict=True)],
            removed_by=next((name for name, ok in zip(STAGES, alive, strict=True) if not ok), None),
        ))
    kept = [int(torch.isfinite(scores).sum()) for scores in staged]
    return SamplingStages(list(STAGES), rows, kept, settings)


@dataclass(frozen=True)
class SweepPoint:
    temperature: float
    entropy_bits: float
    effective_choices: float  # 2^H: as unsure as a fair pick among this many tokens


def temperature_sweep(
    logits: torch.Tensor, temperatures: tuple[float, ...] = SWEEP_TEMPERATURES
) -> list[SweepPoint]:
    """Entropy of softmax(logits / T) for each T: how temperature flattens or sharpens a step."""
    scaled = logits.float().reshape(1, -1) / torch.tensor(temperatures, dtype=torch.float32)[:, None]
    bits = (torch.special.entr(scaled.softmax(-1)).sum(-1) / nt.LN2).tolist()
    return [SweepPoint(float(t), b, 2.0**b) for t, b in zip(temperatures, bits, strict=True)]
