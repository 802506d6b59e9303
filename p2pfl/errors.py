"""Every error the p2pfl runtime raises, in one tree.

``P2PFLError`` subclasses are user-facing: the CLI prints their message and exits
with status 2, without a traceback. Anything else is a bug.
"""

from __future__ import annotations


class P2PFLError(Exception):
    """Base class of runtime errors that are shown to the user as they are."""


class ConfigError(P2PFLError):
    """A configuration or scenario file is wrong (unknown key, bad value, bad type)."""


class DataError(P2PFLError):
    """A dataset is missing, malformed or cannot be partitioned as asked."""


class KeyFileError(P2PFLError):
    """A key file is missing, unreadable, insecure, or would be overwritten."""


class LedgerFileError(P2PFLError):
    """A ledger file is missing, truncated or corrupted."""


class ProvenanceError(P2PFLError):
    """A run's crate cannot be written: a file it must list is missing."""
