"""Commands: replay, reconcile, dlq."""
