"""The operator page at ``/operator`` (see :mod:`.app`); off unless a token is set."""

from cms_sync.operator.app import OperatorOptions, operator_app

__all__ = ["OperatorOptions", "operator_app"]
