"""GROQ: queries built from the media mapping by pure functions."""

from cms_sync.groq.query import DocumentQuery, build_document_query

__all__ = ["DocumentQuery", "build_document_query"]
