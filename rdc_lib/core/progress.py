"""Progress bars that fit where they are written: tqdm on a terminal, plain lines in a log file.

A bar redraws itself with carriage returns and escape codes; written to a file or a pipe (``make
run > log``, a CI log, a Slurm job) that becomes one unreadable line per refresh. ``progress_bar``
returns a tqdm bar when the stream is a terminal and a :class:`PlainProgress` otherwise, which
writes one line per step (``desc: 3/5 nb, 41.2 s, <postfix>``) and supports the tqdm methods the
project uses (update, set_postfix, set_postfix_str, write, close, the context manager).
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm.auto import tqdm

__all__ = ["PlainProgress", "is_terminal", "progress_bar"]


def is_terminal(stream: Any = None) -> bool:
    """True if ``stream`` (default: sys.stderr, where tqdm writes) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class PlainProgress:
    """tqdm's interface, written as one plain line per update (no carriage returns, no escape codes)."""

    def __init__(self, total: int | None, desc: str, unit: str, stream: TextIO | None = None):
        self.total, self.desc, self.unit = total, desc, unit
        self.n = 0
        self.postfix = ""
        self._stream = stream
        self._t0 = time.perf_counter()

    @property
    def stream(self) -> TextIO:
        return sys.stderr if self._stream is None else self._stream

    def _emit(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def line(self) -> str:
        """The line an update writes: 'desc: n/total unit, seconds s[, postfix]'."""
        count = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
        text = f"{self.desc}: {count} {self.unit}, {time.perf_counter() - self._t0:.1f} s"
        return text + (f", {self.postfix}" if self.postfix else "")

    def update(self, n: int = 1) -> None:
        self.n += n
        self._emit(self.line())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        items = dict(ordered_dict or {}, **kwargs)
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def write(self, s: str) -> None:
        self._emit(s)

    def close(self) -> None:
        pass

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Disabled(PlainProgress):
    def _emit(self, text: str) -> None:
        pass


def progress_bar(
    total: int | None,
    desc: str,
    unit: str = "it",
    *,
    enabled: bool = True,
    initial: int = 0,
    stream: TextIO | None = None,
    **tqdm_kwargs: Any,
) -> Any:
    """A tqdm bar on a terminal (``stream``, default sys.stderr), else a :class:`PlainProgress`; silent if not
    ``enabled`` (every method still works). ``initial``: steps already done (a resumed run)."""
    if not enabled:
        bar = _Disabled(total, desc, unit, stream)
    elif is_terminal(stream):
        return tqdm(total=total, desc=desc, unit=unit, file=stream, initial=initial, **tqdm_kwargs)
    else:
        bar = PlainProgress(total, desc, unit, stream)
    bar.n = initial
    return bar
