"""The sync engine: mirrors one account's server into the mail store, for whoever runs it.

``imap_sync`` and ``pop3_sync`` learn the server's state and the stored one, ``plan``
decides what changed (pure: no server, no database), and the two apply the plan (with
``pipeline`` overlapping the fetch and the writes), handing every write to
``email_service.mailstore``. The engine
imports no use case: starting, scheduling and running sync tasks (``services.syncing``,
``services.sync_schedule``) and the watcher's side (``services.push``) sit above it and
pass in what it needs (a ``SyncJob``: the database, the store, the account, the options).
"""
