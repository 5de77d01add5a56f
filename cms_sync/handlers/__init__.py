"""Thin HTTP endpoints of the webhook service (Sanity deliveries, health)."""
