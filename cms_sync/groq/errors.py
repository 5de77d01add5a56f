"""GROQ errors: one base, a syntax error with its position, and evaluation errors."""

from __future__ import annotations


class GroqError(Exception):
    """Base of every error the GROQ engine raises."""


class GroqSyntaxError(GroqError):
    """The query text is not valid GROQ (or names an unknown function, or miscounts
    its arguments). ``position`` is the 0-based offset in the query, ``line`` and
    ``column`` are 1-based, as groq-js reports them.
    """

    def __init__(self, message: str, position: int, query: str) -> None:
        super().__init__(f"Syntax error in GROQ query at position {position}: {message}")
        self.message = message
        self.position = position
        self.query = query
        before = query[:position]
        self.line = before.count("\n") + 1
        self.column = position - (before.rfind("\n") + 1) + 1


class GroqEvaluationError(GroqError):
    """A valid query that cannot be evaluated (a tuple as a value, a function that only
    a search backend provides).
    """
