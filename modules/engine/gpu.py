"""`spaces.GPU` on a ZeroGPU Space, a no-op decorator everywhere else."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

try:  # the `spaces` package exists on Hugging Face Spaces only
    import spaces

    gpu: Callable[[F], F] = spaces.GPU
except ImportError:

    def gpu(function: F) -> F:
        """No ZeroGPU here: run the function as it is."""
        return function
