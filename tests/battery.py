"""Counts of the reliability battery, printed as one line at the end of the test run."""

from __future__ import annotations

from contextlib import contextmanager


class Battery:
    def __init__(self) -> None:
        self.bad_inputs = self.handled = self.lost = 0
        self.faults = self.survived = self.mismatches = 0
        self.fuzzed = 0

    @contextmanager
    def bad_input(self):
        """A bad input whose outcome (recorded skip, or embedded correctly) the body asserts."""
        self.bad_inputs += 1
        try:
            yield
        except BaseException:
            self.lost += 1
            raise
        self.handled += 1

    @contextmanager
    def fault(self):
        """An injected fault; the body asserts that the library survived it."""
        self.faults += 1
        yield
        self.survived += 1

    def mismatch(self, ok: bool, what: str) -> None:
        """Database and index (or a re-run and a clean run) must agree."""
        if not ok:
            self.mismatches += 1
            raise AssertionError(f"mismatch: {what}")

    def line(self) -> str | None:
        if not (self.bad_inputs or self.faults):
            return None
        return (
            f"reliability: {self.bad_inputs} bad inputs ({self.handled} recorded, {self.lost} lost), "
            f"{self.fuzzed} fuzzed inputs (only ImageError), "
            f"{self.faults} faults injected ({self.survived} survived), {self.mismatches} mismatches"
        )


BATTERY = Battery()
