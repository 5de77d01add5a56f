from __future__ import annotations

from cms_sync.allowlist import AllowedHost
from cms_sync.document import parse_document
from cms_sync.mapping import default_mapping
from cms_sync.mutations import build_patch
from cms_sync.planner import plan_document
from cms_sync.records import StoredAsset
from fakes import recorded_document


def plan_of(doc_id: str):  # type: ignore[no-untyped-def]
    result = recorded_document(doc_id)
    return plan_document(parse_document(result, default_mapping()), (AllowedHost("cdn.sanity.io"),))


def record(asset_id: str, handle: str) -> StoredAsset:
    return StoredAsset(
        asset_id, handle, f"https://cdn.filestackcontent.com/{handle}", 7, "image/png"
    )


def test_patch_sets_exact_paths_guarded_by_revision() -> None:
    plan = plan_of("product-shared-a")
    (asset_id,) = plan.assets_to_store()
    patch = build_patch(plan, {asset_id: record(asset_id, "H1")})
    assert patch == {
        "patch": {
            "id": "product-shared-a",
            "ifRevisionID": "rP5hhhhhhhhhhhhhhhhhhh",
            "set": {
                f"{prefix}.{name}": value
                for prefix in ("mainImage", 'gallery[_key=="s1"]')
                for name, value in (
                    ("filestackHandle", "H1"),
                    ("filestackUrl", "https://cdn.filestackcontent.com/H1"),
                    ("filestackSize", 7),
                    ("filestackMimeType", "image/png"),
                    ("filestackSourceAsset", asset_id),
                )
            },
        }
    }


def test_no_patch_when_nothing_was_obtained_or_needed() -> None:
    assert build_patch(plan_of("product-synced"), {}) is None
    assert build_patch(plan_of("post-1"), {}) is None
    assert build_patch(plan_of("post-no-media"), {}) is None


def test_only_slots_whose_asset_was_obtained_are_set() -> None:
    plan = plan_of("product-1")
    first = next(iter(plan.assets_to_store()))
    patch = build_patch(plan, {first: record(first, "H")})
    assert patch is not None
    assert {path.split(".")[0] for path in patch["patch"]["set"]} == {"mainImage"}
