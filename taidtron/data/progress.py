"""Progress of a tokenization run: documents, tokens/s and input bytes read, as a tqdm bar on a terminal or as one
plain line every `interval` seconds in a batch job's log.

    tokenize -> fineweb_text_document: 1,204,736 documents, 1.31B tokens, 5.12 GB of 27.4 GB read (18.7%),
        412,300 tokens/s (51,538 per worker), 0:52:57 elapsed, ETA 3:49:51          (one line in the log)
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable

from taidtron.metrics import interactive_console


def _size(nbytes: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes:.0f} B"


class TokenizeProgress:
    """`update` after each batch written. Shows nothing when `enabled` is False."""

    def __init__(
        self,
        name: str,
        total_bytes: int,
        workers: int,
        *,
        enabled: bool,
        log: Callable[[str], None] | None,
        interval: float = 30.0,
        interactive: bool | None = None,
    ) -> None:
        self.name, self.total_bytes, self.workers = name, total_bytes, workers
        self.documents = self.tokens = self.bytes_read = 0
        self.log = log if enabled else None
        self.interval = interval
        self._start = self._last_line = time.monotonic()
        self.bar = None
        if enabled and (interactive_console() if interactive is None else interactive):
            from tqdm import tqdm

            self.bar = tqdm(
                total=total_bytes, unit="B", unit_scale=True, desc=f"tokenize -> {name}", dynamic_ncols=True
            )
            self.log = None

    def update(self, documents: int, tokens: int, nbytes: int) -> None:
        self.documents += documents
        self.tokens += tokens
        self.bytes_read += nbytes
        if self.bar is not None:
            self.bar.update(nbytes)
            self.bar.set_postfix_str(f"{self.documents:,} docs, {self._rate():,.0f} tok/s", refresh=False)
        elif self.log is not None and time.monotonic() - self._last_line >= self.interval:
            self._last_line = time.monotonic()
            self.log(self.line())

    def _rate(self) -> float:
        return self.tokens / max(time.monotonic() - self._start, 1e-9)

    def line(self) -> str:
        """The plain progress line (what a batch log shows every `interval` seconds)."""
        elapsed = time.monotonic() - self._start
        share = self.bytes_read / self.total_bytes if self.total_bytes else 1.0
        eta = elapsed * (1 - share) / share if 0 < share < 1 else 0.0
        rate = self._rate()
        return (
            f"tokenize -> {self.name}: {self.documents:,} documents, {self.tokens:,} tokens, "
            f"{_size(self.bytes_read)} of {_size(self.total_bytes)} read ({share:.1%}), {rate:,.0f} tokens/s "
            f"({rate / self.workers:,.0f} per worker), {datetime.timedelta(seconds=round(elapsed))} elapsed, "
            f"ETA {datetime.timedelta(seconds=round(eta))}"
        )

    def finish(self) -> None:
        """After the last batch: the closing progress line of a batch log."""
        if self.bar is None and self.log is not None:
            self.log(self.line())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
