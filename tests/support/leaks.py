"""The credentials the suite configures, and where they must never show."""

from __future__ import annotations

#: Every credential the suite configures. No line a test makes may show one: the
#: captured output of each test is checked (service processes check their own logs).
TEST_SECRETS = (
    "sk-test-token",
    "sk-secret-token",
    "sk-live-123",
    "sk-live-token-1234567890",
    "sk-lake",
    "sk-emulate-token",
    "sk-wrong",
    "fs-test-key",
    "fs-secret",
    "AfsLiveApiKey0987",
    "fs-app-secret-value",
    "whsec-test",
    "whsec-emulated",
    "whsec-e2e",
    "whsec-connections",
    "whsec-backfill-test",
    "whsec-acceptance",
    "fs-hook-secret",
    "fs-webhook-secret",
)


def shown_secrets(text: str) -> list[str]:
    """The test credentials that appear in ``text``."""
    return sorted(secret for secret in TEST_SECRETS if secret in text)
