"""p2pfl: peer-to-peer decentralized learning with no central server."""

__version__ = "0.1.0"
