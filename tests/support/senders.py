"""Sanity's side of a webhook: signed deliveries posted over real sockets."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

import httpx

from cms_sync import signature

SECRET = "whsec-acceptance"


@dataclass
class Deliveries:
    """Signs and posts deliveries the way Sanity does (a key per message, kept on retry)."""

    url: str
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))
    sent: int = 0
    counter: int = 0

    def message(self, body: dict[str, Any], **headers: str) -> tuple[bytes, dict[str, str]]:
        self.counter += 1
        raw = json.dumps(body).encode()
        signed = {
            "content-type": "application/json",
            "idempotency-key": f"msg-{self.counter}",
            signature.HEADER: signature.sign(SECRET, raw, 1_763_700_000_000 + self.counter),
            **headers,
        }
        return raw, signed

    def groq(
        self, doc_id: str, doc_type: str, operation: str = "update"
    ) -> tuple[bytes, dict[str, str]]:
        return self.message(
            {"_id": doc_id, "_type": doc_type, "_rev": "x"},
            **{"sanity-operation": operation, "sanity-document-id": doc_id},
        )

    def legacy(self, *ids: str) -> tuple[bytes, dict[str, str]]:
        return self.message(
            {
                "transactionId": "t",
                "ids": {"created": [], "updated": list(ids), "deleted": [], "all": list(ids)},
            }
        )

    def post(self, message: tuple[bytes, dict[str, str]], url: str | None = None) -> int:
        self.sent += 1
        body, headers = message
        return self.http.post(
            f"{url or self.url}/webhooks/sanity", content=body, headers=headers
        ).status_code


def mixed_deliveries(
    d: Deliveries, doc_ids: list[str], rng: random.Random
) -> list[tuple[bytes, dict[str, str]]]:
    """GROQ and legacy bodies, bursts for one document, and Sanity-style repeats."""

    def doc_type(doc_id: str) -> str:
        return doc_id.split("-")[0]

    messages = [d.groq(i, doc_type(i), "create") for i in doc_ids]
    messages += [d.legacy(*rng.sample(doc_ids, 3)) for _ in range(15)]
    burst_doc = rng.choice(doc_ids)
    messages += [d.groq(burst_doc, doc_type(burst_doc)) for _ in range(10)]
    rng.shuffle(messages)
    repeats = rng.sample(messages, 25)  # delivered twice: the same key, as Sanity retries
    return messages + repeats
