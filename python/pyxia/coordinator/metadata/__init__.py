"""Metadata providers: where the coordinator keeps the ClusterStatus, with
versioned compare-and-set, and how coordinators elect the one that leads.

See :mod:`.provider` for the contract; one module per provider.
"""

from .factory import PROVIDER_NAMES, create_provider, split_addresses
from .provider import NOT_EXISTS, LeadershipLost, MetadataProvider, Version

__all__ = [
    "NOT_EXISTS",
    "PROVIDER_NAMES",
    "LeadershipLost",
    "MetadataProvider",
    "Version",
    "create_provider",
    "split_addresses",
]
