"""Build the write-back mutation for a planned document. Pure.

One ``patch`` per document, guarded by ``ifRevisionID`` so it applies only to the
revision the plan was made from, setting exact JSONMatch paths. No patch at all when
nothing needs setting: that is what stops the worker's own patch (itself an ``update``
event) from looping.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cms_sync.media import WRITTEN
from cms_sync.planner import Action, Plan
from cms_sync.records import StoredAsset


def slot_values(record: StoredAsset) -> dict[str, Any]:
    """The fields written onto a media object for a stored asset."""
    return {f.wire: getattr(record, f.stored) for f in WRITTEN if f.stored is not None}


def build_patch(plan: Plan, stored: Mapping[str, StoredAsset]) -> dict[str, Any] | None:
    """The patch mutation for every STORE slot whose asset is in ``stored``, or None."""
    sets: dict[str, Any] = {}
    for slot_plan in plan.slots:
        if slot_plan.action is not Action.STORE:
            continue
        record = stored.get(slot_plan.asset.id)
        if record is None:
            continue
        for name, value in slot_values(record).items():
            sets[f"{slot_plan.slot.path}.{name}"] = value
    if not sets:
        return None
    document = plan.document
    return {"patch": {"id": document.id, "ifRevisionID": document.rev, "set": sets}}
