"""GROQ: a parser and evaluator. A leaf: it imports nothing else of cms_sync.

The engine's API is a contract, held fixed: ``parse(query, params)`` returns a tree and
raises :class:`GroqSyntaxError` (with ``.position``) on bad text; ``evaluate(query_or_tree,
dataset, params, *, now)`` returns JSON data, synchronously. Semantics follow groq-js, the
reference implementation; ``tests/groq/`` holds the cases recorded from it.
"""

from cms_sync.groq.errors import GroqError, GroqEvaluationError, GroqSyntaxError
from cms_sync.groq.evaluator import evaluate
from cms_sync.groq.parser import parse
from cms_sync.groq.syntax import Query

__all__ = [
    "GroqError",
    "GroqEvaluationError",
    "GroqSyntaxError",
    "Query",
    "evaluate",
    "parse",
]
