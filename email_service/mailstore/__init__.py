"""The mail store: the one writer of folders, messages, flags and threads.

Sync, sending and write-back decide what changed; the mail store writes it, and records
each change (``changes``) in the same transaction as the state it describes. Nothing
here talks to a mail server, and nothing here imports a service.

- ``messages``: batches of mirrored messages (rows, attachment blobs, search index,
  conversations), flag meanings, counts and removal.
- ``folders``: folder rows from the server's list, folders jobs create, stored counts.
- ``copies``: a message we put on the server ourselves (Sent copy, draft).
- ``edits``: flag edits made through the API, and what their write-back settles.
- ``changes``: the ``folder.*``, ``message.*`` and ``sync.completed`` change records.
"""
