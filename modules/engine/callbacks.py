"""The callback types through which long work reports what it is doing."""

from __future__ import annotations

from collections.abc import Callable

# One line for the person waiting ("Downloading …", "Converting …").
StatusCallback = Callable[[str], None]
# (pieces done, pieces in all), for a progress bar.
ProgressCallback = Callable[[int, int], None]
