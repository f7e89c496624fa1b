"""Classify texts one of two ways: a sequence-classification model, or zero-shot labels
scored by the chat model (works offline on the embedded model). The sentiment tab and its
API endpoints call this; the two ways live in `sentiment` and `zero_shot`."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from modules.engine.callbacks import ProgressCallback
from modules.engine.model_cache import ModelCache, ModelKind, StatusCallback
from modules.tasks import sentiment, zero_shot
from modules.tasks.sentiment import Classification


class Method(enum.Enum):
    CLASSIFIER = "classifier"
    ZERO_SHOT = "zero-shot"


@dataclass(frozen=True)
class ClassificationRequest:
    """What to classify with: the classifier's reference, or the zero-shot labels."""

    method: Method
    classifier_ref: str = ""
    labels: str = ", ".join(zero_shot.DEFAULT_LABELS)
    calibrate: bool = True

    def check(self) -> None:
        """Fail on bad labels before any model loads."""
        if self.method is Method.ZERO_SHOT:
            zero_shot.parse_labels(self.labels)


def classify_texts(
    cache: ModelCache,
    chat_model_ref: str,
    texts: Sequence[str],
    request: ClassificationRequest,
    *,
    max_text_tokens: int = zero_shot.MAX_TEXT_TOKENS,
    on_status: StatusCallback | None = None,
    on_progress: ProgressCallback | None = None,
) -> list[Classification]:
    """One result per text, in order, by the requested method."""
    request.check()
    if request.method is Method.ZERO_SHOT:
        chat_model = cache.get(chat_model_ref, ModelKind.CAUSAL_LM, on_status)
        return zero_shot.zero_shot(
            chat_model, texts, request.labels, calibrate=request.calibrate,
            max_text_tokens=min(zero_shot.MAX_TEXT_TOKENS, max_text_tokens),
            on_progress=on_progress,
        )
    classifier = sentiment.load_classifier(cache, request.classifier_ref, on_status)
    return sentiment.classify(classifier, texts, on_progress=on_progress)
