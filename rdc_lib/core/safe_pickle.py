"""A restricted unpickler: only explicitly allowed globals may be loaded; anything else is refused.

Never use plain ``pickle.load`` on a user's file: a pickle can name any callable and run it.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable
from typing import IO, Any


class RefusedGlobalError(pickle.UnpicklingError):
    """Raised when a pickle asks for a global that is not on the allow-list."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` admits only (module, name) pairs in ``allowed``.

    ``overrides`` maps an allowed (module, name) to a replacement object (for example a stand-in
    class that records state instead of importing foreign code).
    """

    def __init__(
        self,
        file: IO[bytes],
        allowed: Iterable[tuple[str, str]],
        overrides: dict[tuple[str, str], Any] | None = None,
        persistent_load: Callable[[Any], Any] | None = None,
        **kwargs: Any,
    ):
        super().__init__(file, **kwargs)
        self._allowed = set(allowed)
        self._overrides = dict(overrides or {})
        if persistent_load is not None:
            self.persistent_load = persistent_load  # type: ignore[method-assign]

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in self._overrides:
            return self._overrides[key]
        if key in self._allowed:
            return super().find_class(module, name)
        raise RefusedGlobalError(
            f"refused to load global '{module}.{name}': this file references code outside the "
            f"allowed types ({len(self._allowed) + len(self._overrides)} admitted); it is not a plain data file"
        )


def restricted_load(file: IO[bytes], allowed: Iterable[tuple[str, str]], **kwargs: Any) -> Any:
    """Unpickle ``file`` admitting only the globals in ``allowed``."""
    return RestrictedUnpickler(file, allowed, **kwargs).load()
