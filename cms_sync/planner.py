"""Decide, for every media slot of a document, what the worker must do. Pure.

A slot needs a store when it has an asset and its Filestack fields are missing,
incomplete, or were made from another asset (the editor replaced the file). A slot
whose handle carries no source-asset marker is of unknown origin and is stored anew:
the worker cannot tell which file that handle holds.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cms_sync.allowlist import AllowedHost, refusal_reason
from cms_sync.document import Asset, Document, Slot


class Action(enum.Enum):
    STORE = "store"  # bring the asset into Filestack (or reuse a stored copy) and patch
    IN_SYNC = "in sync"  # the slot already holds a handle made from its current asset
    EMPTY = "empty"  # no asset in the slot: nothing to do
    BLOCKED = "blocked"  # cannot be synced as it is (reason says why): a failure


@dataclass(frozen=True)
class SlotPlan:
    slot: Slot
    action: Action
    reason: str

    @property
    def asset(self) -> Asset:
        """The slot's asset (present for STORE)."""
        assert self.slot.asset is not None
        return self.slot.asset


@dataclass(frozen=True)
class Plan:
    document: Document
    slots: tuple[SlotPlan, ...]

    def assets_to_store(self) -> dict[str, Asset]:
        """Distinct assets the STORE slots need, by asset id, in document order."""
        assets: dict[str, Asset] = {}
        for slot_plan in self.slots:
            if slot_plan.action is Action.STORE:
                assets.setdefault(slot_plan.asset.id, slot_plan.asset)
        return assets

    def count(self, *actions: Action) -> int:
        return sum(1 for s in self.slots if s.action in actions)


def _is_in_sync(slot: Slot, asset: Asset) -> bool:
    # Size and MIME type are not required: a store response may lack them, and a
    # condition the worker's own patch cannot satisfy would make it store forever.
    return slot.source_asset == asset.id and bool(slot.handle) and bool(slot.url)


def _store_reason(slot: Slot, asset: Asset) -> str:
    if not slot.handle:
        return "no Filestack handle"
    if slot.source_asset is None:
        return "handle of unknown origin (no source-asset marker)"
    if slot.source_asset != asset.id:
        return f"asset replaced (handle was made from {slot.source_asset})"
    return "Filestack fields incomplete"


def plan_slot(slot: Slot, allowed_hosts: tuple[AllowedHost, ...]) -> SlotPlan:
    asset = slot.asset
    if asset is None:
        return SlotPlan(slot, Action.EMPTY, "no asset")
    if _is_in_sync(slot, asset):
        return SlotPlan(slot, Action.IN_SYNC, f"handle made from {asset.id}")
    if slot.is_array_item and not slot.key:
        return SlotPlan(slot, Action.BLOCKED, "array item has no _key, so it cannot be patched")
    if not asset.url:
        return SlotPlan(slot, Action.BLOCKED, f"asset {asset.id} has no URL")
    refused = refusal_reason(asset.url, allowed_hosts)
    if refused is not None:
        return SlotPlan(
            slot, Action.BLOCKED, f"asset URL {asset.url!r} not sent to Filestack: {refused}"
        )
    return SlotPlan(slot, Action.STORE, _store_reason(slot, asset))


def plan_document(document: Document, allowed_hosts: tuple[AllowedHost, ...]) -> Plan:
    return Plan(
        document=document,
        slots=tuple(plan_slot(slot, allowed_hosts) for slot in document.slots),
    )
