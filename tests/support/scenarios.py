"""Generated datasets for tests that need more documents than the recorded fixtures hold."""

from __future__ import annotations

import hashlib
from typing import Any


def asset(seed: str) -> dict[str, Any]:
    """A ``sanity.imageAsset`` on the project's CDN path, its id derived from ``seed``."""
    digest = hashlib.sha1(seed.encode()).hexdigest()
    return {
        "_id": f"image-{digest}-800x600-jpg",
        "_type": "sanity.imageAsset",
        "url": f"https://cdn.sanity.io/images/cmsdemo/production/{digest}-800x600.jpg",
        "originalFilename": f"{seed}.jpg",
        "mimeType": "image/jpeg",
        "size": 1000 + len(seed),
        "extension": "jpg",
    }


def image(of: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"_type": "image", "asset": {"_type": "reference", "_ref": of["_id"]}, **extra}


def catalogue(products: int, posts: int, shared: int) -> list[dict[str, Any]]:
    """Products (a main image and a 2-image gallery from a shared pool) and posts.

    Distinct assets: ``products + posts + min(shared, 2 * products)``.
    """
    pool = [asset(f"shared-{n}") for n in range(shared)]
    docs: list[dict[str, Any]] = [*pool]
    for n in range(products):
        main = asset(f"product-{n}")
        docs.append(main)
        docs.append(
            {
                "_id": f"product-{n}",
                "_type": "product",
                "_rev": f"r{n}",
                "_updatedAt": "2026-11-20T10:00:00Z",
                "mainImage": image(main),
                "gallery": [
                    image(pool[n % shared], _key=f"g{n}a"),
                    image(pool[(n + 1) % shared], _key=f"g{n}b"),
                ],
            }
        )
    for n in range(posts):
        main = asset(f"post-{n}")
        docs.append(main)
        docs.append(
            {
                "_id": f"post-{n}",
                "_type": "post",
                "_rev": f"q{n}",
                "_updatedAt": "2026-11-20T10:00:00Z",
                "mainImage": image(main),
            }
        )
    return docs


def slots(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The media objects of a generated product or post."""
    return [doc["mainImage"], *doc.get("gallery", [])]


def converged(documents: dict[str, dict[str, Any]], doc_ids: list[str]) -> bool:
    """Every slot carries a handle made from its current asset."""
    return all(
        s.get("filestackSourceAsset") == s["asset"]["_ref"] and s.get("filestackHandle")
        for i in doc_ids
        for s in slots(documents[i])
    )
