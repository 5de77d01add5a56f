"""Local emulators of Sanity's Content Lake and Filestack, for tests, demos and benchmarks.

They speak the wire formats of WIRE.md and never import the worker's own clients: an
emulator built from the client's assumptions would test nothing.
"""

from cms_sync.emulators.faults import SANITY_LIMITS, Faults
from cms_sync.emulators.filestack import Filestack
from cms_sync.emulators.http import Handler, bind, serve
from cms_sync.emulators.lake import ContentLake
from cms_sync.emulators.webhooks import Delivery, Dispatcher, Webhook

__all__ = [
    "SANITY_LIMITS",
    "ContentLake",
    "Delivery",
    "Dispatcher",
    "Faults",
    "Filestack",
    "Handler",
    "Webhook",
    "bind",
    "serve",
]
