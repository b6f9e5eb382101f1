"""The sync engine: mirrors one account's server into the mail store, for whoever runs it.

``imap_sync`` and ``pop3_sync`` decide what changed (with ``pipeline`` overlapping the
fetch and the writes) and hand every write to ``email_service.mailstore``. The engine
imports no use case: starting, scheduling and running sync tasks (``services.syncing``,
``services.sync_schedule``) and the watcher's side (``services.push``) sit above it and
pass in what it needs (a ``SyncJob``: the database, the store, the account, the options).
"""
