"""A call run on a daemon thread while the caller goes on (an interrupt never waits for it)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Background(Generic[T]):
    """Runs ``fn(ready)`` on a daemon thread. ``fn`` may call ``ready()`` once its preparation
    is done (:meth:`wait_ready` waits for that, or for the end); :meth:`result` waits and
    re-raises what ``fn`` raised."""

    def __init__(self, fn: Callable[[Callable[[], None]], T], name: str = "organizer-background"):
        self._fn = fn
        self._value: T | None = None
        self._error: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._fn(self._ready.set)
        except BaseException as exc:  # handed to the caller of result()
            self._error = exc
        finally:
            self._ready.set()

    def ready(self) -> bool:
        return self._ready.is_set()

    def wait_ready(self) -> None:
        self._ready.wait()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self) -> T:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]
