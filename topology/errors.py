"""The errors the topology lab raises for bad input (``NoRelay`` is a ``TopologyError``)."""

from __future__ import annotations


class TopologyError(ValueError):
    """A graph family was asked for with parameters it cannot satisfy.

    ``parameter`` names the offending parameter and the message states the rule.
    """

    def __init__(self, parameter: str, rule: str) -> None:
        super().__init__(f"{parameter}: {rule}")
        self.parameter = parameter
        self.rule = rule


class NoRelay(TopologyError):
    """An edge joins two members that accept no connection and no member can relay it."""
