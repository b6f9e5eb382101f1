"""Use cases. Each takes a ``Scope``, raises ``email_service.errors``, and only flushes."""
