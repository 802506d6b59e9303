"""p2pfl: peer-to-peer decentralized learning with no central server."""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``p2pfl.Peer`` on first use, so that ``import p2pfl`` stays light (no torch)."""
    if name == "Peer":
        from p2pfl.peer import Peer

        return Peer
    raise AttributeError(f"module 'p2pfl' has no attribute {name!r}")
