"""Caps on what a mail server may send us.

Any tenant can point an account at any server, and the workers that talk to it are shared
by all tenants, so every byte from an IMAP, POP3 or SMTP server is untrusted.
"""

from __future__ import annotations

__all__ = ["MAX_FOLDER_UIDS"]

#: Most UIDs one folder may report (ESEARCH ALL, SEARCH). A folder of a million
#: messages is beyond what any mail client shows; a server claiming more is not believed.
MAX_FOLDER_UIDS = 1_000_000
