"""The errors of the run spec: all ``ConfigError`` (a setting the user can fix)."""

from __future__ import annotations

from p2pfl.errors import ConfigError


class PlanError(ConfigError):
    """A training plan cannot be run as written (says which key, step or node, and why)."""


__all__ = ["ConfigError", "PlanError"]
