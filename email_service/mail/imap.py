"""IMAP client session for syncing and changing a mailbox, built on IMAPClient/imaplib.

One :class:`ImapSession` is one authenticated connection, used from one thread. It is a
context manager: ``__enter__`` connects (after the outbound connection guard), negotiates
TLS and logs in; ``__exit__`` logs out. All failures surface as
:mod:`email_service.mail.errors` exceptions.

Why not just IMAPClient's high-level API:

* IMAPClient turns on imaplib's debug output (``debug = 5``), which formats every line,
  message bodies included, for a logger that drops it; we switch it off right after
  connecting (fetching 10,000 messages from a local Dovecot ran about 5x faster: imaplib
  formats the text before the logger drops it, so raising the logger's level does not help).
* Its ``fetch()`` buffers a whole batch and parses it in one go; :meth:`ImapSession.fetch`
  instead reads one FETCH response at a time from imaplib, so memory stays bounded by one
  message plus socket buffers, and the next batch's command can be sent before the current
  one has been read (pipelining).
* It has no SELECT parameters (CONDSTORE), ESEARCH, VANISHED or COPYUID handling.

So commands go through imaplib's internal command/response methods (``_command``,
``_simple_command``, ``_get_response``, ``untagged_responses``), the same internals
IMAPClient itself builds on. IMAPClient still provides the connection (TLS socket
wrapping, timeouts), its response parser and modified UTF-7 folder name coding.
"""

from __future__ import annotations

import imaplib
import logging
import re
import ssl
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

from imapclient.exceptions import CapabilityError
from imapclient.imap_utf7 import decode as decode_utf7
from imapclient.imap_utf7 import encode as encode_utf7
from imapclient.response_parser import parse_fetch_response, parse_response

from .endpoint import MailEndpoint, PinnedIMAPClient, resolve_target, tls_context
from .errors import (
    MailAuthError,
    MailConnectionError,
    MailError,
    MailProtocolError,
    describe_network_error,
    redact,
)
from .imap_bounds import UidRanges, copyuid_target
from .limits import MAX_FOLDER_UIDS, BoundedReader
from .pool import ConnectionPool, pool_key
from .sasl import (
    TokenRefused,
    describe_challenge,
    error_reply,
    initial_response,
    login_with_refresh,
)

__all__ = [
    "SPECIAL_USES",
    "FetchedMessage",
    "FolderState",
    "ImapSession",
    "RemoteFolder",
    "is_valid_keyword",
    "special_use_by_name",
]

#: RFC 6154 special-use attributes, in their canonical spelling.
SPECIAL_USES = ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash")
_SPECIAL_BY_LOWER = {use.lower(): use for use in SPECIAL_USES}

# Folder names clients commonly use when the server does not mark special folders
# (no SPECIAL-USE support); compared case-insensitively with the last path component.
_FALLBACK_SPECIAL_NAMES: dict[str, tuple[str, ...]] = {
    "\\Sent": ("sent", "sent items", "sent messages", "sent mail"),
    "\\Drafts": ("drafts", "draft"),
    "\\Junk": ("junk", "spam", "junk e-mail", "junk email", "bulk mail"),
    "\\Trash": ("trash", "deleted items", "deleted messages", "deleted", "bin"),
    "\\Archive": ("archive", "archives"),
}

#: System flags a client may set (``\Recent`` is server-managed).
_SYSTEM_FLAGS = {
    f.lower(): f for f in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")
}

# An IMAP keyword is an atom: visible ASCII except the atom-specials ( ) { % * " \ ]
# (RFC 3501 section 9). Anything else would break the command or inject extra flags.
_KEYWORD_RE = re.compile(r"[!#$&'+,\-./0-9:;<=>?@A-Z\[^_`a-z|}~]+")

log = logging.getLogger(__name__)

_HEADER_NAME_RE = re.compile(r"[A-Za-z0-9-]+")
_APPENDUID_RE = re.compile(rb"\[APPENDUID (\d+) (\d+)\]", re.IGNORECASE)
_ESEARCH_ALL_RE = re.compile(rb"\bALL ([0-9:,*]+)", re.IGNORECASE)
_RESPONSE_CODE_RE = re.compile(r"^\[([A-Z-]+)")

# FETCH items for a full message. BODY.PEEK[] leaves \Seen alone (BODY[] would set it).
_MESSAGE_ITEMS = "(UID BODY.PEEK[] FLAGS INTERNALDATE RFC822.SIZE)"
_MESSAGE_ITEMS_MODSEQ = "(UID BODY.PEEK[] FLAGS INTERNALDATE RFC822.SIZE MODSEQ)"
# For a message above the size cap: its headers (the first 64 KiB of them) instead.
_HEADER_ITEMS = "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER]<0.65536>)"
_HEADER_ITEMS_MODSEQ = "(UID FLAGS INTERNALDATE RFC822.SIZE MODSEQ BODY.PEEK[HEADER]<0.65536>)"
# Marks a FETCH whose literal was over the cap and thrown away by the reader.
_DISCARDED = b"X-DISCARDED-LITERAL"
# Marks a FETCH answer that could not be parsed; the value says why, in words.
_UNREADABLE = b"X-UNREADABLE"
# An IMAP body part number (RFC 3501 section 6.4.5): "2", "1.2.3".
_SECTION_RE = re.compile(r"[1-9][0-9]{0,5}(?:\.[1-9][0-9]{0,5}){0,31}")

# Commands that carry a UID set are kept well under servers' line limits (Dovecot's
# imap_max_line_length is 64 KiB; some servers allow 8 KiB).
_MAX_SET_CHARS = 6000
_FLAG_CHUNK = 5000

# Pipeline depth for fetch(): how many UID FETCH commands may be outstanding. 2 lets the
# server produce batch n+1 while we are still parsing and handing out batch n.
_FETCH_PIPELINE_DEPTH = 2


@dataclass(frozen=True)
class FolderState:
    """State reported by SELECT/EXAMINE.

    ``highestmodseq`` is ``None`` when the server lacks CONDSTORE or the folder does not
    keep mod-sequences (``NOMODSEQ``).
    """

    uidvalidity: int
    uidnext: int
    exists: int
    highestmodseq: int | None


@dataclass(frozen=True)
class RemoteFolder:
    """A folder as listed by the server.

    ``name`` is decoded from modified UTF-7; ``special_use`` is the RFC 6154 attribute
    (canonical spelling, e.g. ``"\\\\Sent"``) or ``None``; ``selectable`` is false for
    ``\\Noselect``/``\\NonExistent`` folders (pure hierarchy nodes).
    """

    name: str
    delimiter: str | None
    flags: tuple[str, ...]
    special_use: str | None
    selectable: bool
    #: The folder's state from LIST-STATUS, when it was asked for and the server has it.
    status: FolderState | None = None


@dataclass(frozen=True)
class FetchedMessage:
    """One message as fetched: exact bytes as stored on the server plus metadata.

    ``internaldate`` is timezone-aware UTC, or ``None`` when the server sent none that
    parses (``NIL``, garbage). ``modseq`` is set when CONDSTORE is in use.
    ``flags`` never include ``\\Recent`` (per-session state, not a message property).
    """

    uid: int
    flags: tuple[str, ...]
    internaldate: datetime | None
    size: int
    raw: bytes
    modseq: int | None
    #: The message is above ``max_message_bytes``: ``raw`` holds its headers only (or
    #: nothing, when the server sent the body anyway and it was thrown away).
    too_large: bool = False
    #: The server's answer for this UID could not be parsed: why, in words (``raw`` is
    #: empty). The message cannot be stored; a sync lists it as skipped and moves on.
    unreadable: str | None = None


def special_use_by_name(folder: RemoteFolder) -> str | None:
    """The special use a client would guess from ``folder``'s name alone, if any.

    For servers that do not mark their special folders: ``Sent Items`` is ``\\Sent``,
    ``Spam`` is ``\\Junk`` and so on, compared case-insensitively with the last path
    component. The server's own attribute, when present, always wins over this guess.
    """
    leaf = folder.name.rsplit(folder.delimiter, 1)[-1] if folder.delimiter else folder.name
    for use, names in _FALLBACK_SPECIAL_NAMES.items():
        if leaf.lower() in names:
            return use
    return None


def is_valid_keyword(name: str) -> bool:
    """Whether ``name`` can be stored as an IMAP keyword (a label) as it is.

    Keywords are ASCII atoms: no spaces, no ``( ) { % * " \\ ]``, no control or
    non-ASCII characters, and they do not start with a backslash.
    """
    return bool(_KEYWORD_RE.fullmatch(name))


class ImapSession:
    """An authenticated IMAP connection (context manager; not thread-safe).

    ``with ImapSession(endpoint) as imap:`` runs the connection guard, connects with the
    endpoint's encryption (``tls`` implicit TLS, ``starttls`` refused unless the server
    offers STARTTLS, ``none`` plaintext; certificates always verified), logs in, and
    enables CONDSTORE/QRESYNC where offered. On exit it logs out; errors while logging out
    are ignored because the work is already done.

    Attributes after entering: ``capabilities`` (upper-case names, post-login),
    ``supports_condstore``, ``supports_qresync`` (enabled for this session), and
    ``round_trips``, the number of commands sent so far (connection and login included).

    Methods that read or change messages need a folder opened with :meth:`select`;
    changing messages needs ``readonly=False``. Calling them otherwise raises
    ``RuntimeError`` (a programming error, not a server problem).

    Raises (from every method): :class:`MailAuthError` (login rejected),
    :class:`MailConnectionError` (network/TLS trouble, dropped connection),
    :class:`MailProtocolError` (a command was refused or the reply made no sense).
    The connection guard's own exception propagates unchanged.
    """

    def __init__(self, endpoint: MailEndpoint) -> None:
        self._endpoint = endpoint
        self._client: Any = None  # IMAPClient (untyped)
        # imaplib.IMAP4 under the client. Typed Any: we use its private command and
        # response internals, which typeshed does not describe.
        self._imap: Any = None
        self._broken = False
        # What a hostile or broken server made the session put up with (a literal over
        # the cap thrown away, an answer that could not be read, UIDs beyond the folder):
        # the session did its work, but it is not kept for another job.
        self._irregular: str | None = None
        self._selected: str | None = None
        self._readonly = True
        self._state: FolderState | None = None
        self._enabled_condstore = False
        self.capabilities: frozenset[str] = frozenset()
        self.supports_condstore = False
        self.supports_qresync = False
        self.round_trips = 0

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> ImapSession:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        """Connect, secure and log in (what ``__enter__`` does).

        Raises :class:`MailConnectionError`, :class:`MailAuthError`,
        :class:`MailProtocolError`, or the guard's exception.
        """
        if self._client is not None:
            raise RuntimeError("the IMAP session is already open")
        ep = self._endpoint
        # The guard resolves the name once and checks the addresses, outside the error
        # mapping so that its refusal is not disguised as a transient network error; the
        # client connects to exactly those addresses (no second lookup to rebind).
        target = resolve_target(ep.host, ep.port)
        try:
            with self._errors("connecting"):
                context = tls_context(ep.ca_file) if ep.encryption != "none" else None
                self._client = PinnedIMAPClient(
                    target,
                    limits=ep.limits,
                    ssl=ep.encryption == "tls",
                    ssl_context=context,
                    timeout=ep.limits.command_timeout,
                )
                self._imap = self._client._imap
                self._arm(ep.limits.login_timeout, "logging in")
                # IMAPClient sets debug = 5; imaplib then formats every line and literal
                # (message bodies) for a logger that drops them: ~5x slower fetches, and
                # it would route the LOGIN line (with the password) to a logger.
                self._imap.debug = 0
                self.round_trips += 1  # imaplib's CAPABILITY after the greeting
                if ep.encryption == "starttls":
                    self._starttls(context)
                self._login()
                self._after_login()
        except BaseException:
            self._shutdown()
            raise

    def close(self) -> None:
        """Log out and close the connection; safe to call more than once. Never raises."""
        imap = self._imap
        if imap is None:
            return
        self._client = self._imap = None
        self._selected = None
        if not self._broken:
            try:
                self.round_trips += 1
                reader = getattr(imap, "file", None)
                if isinstance(reader, BoundedReader):
                    reader.arm(min(self._endpoint.limits.command_timeout, 10.0), "logging out")
                imap.logout()  # imaplib shuts the socket down after BYE
                return
            except Exception:  # noqa: S110 - the session's work is done; logout is courtesy
                pass
        with suppress(Exception):  # the socket may already be gone
            imap.shutdown()

    def _shutdown(self) -> None:
        self._broken = True
        self.close()

    @property
    def reusable(self) -> bool:
        """Whether the session may serve another job: open, no command broke it, and the
        server kept within every bound (see :meth:`_mark_irregular`)."""
        return self._imap is not None and not self._broken and self._irregular is None

    def _mark_irregular(self, what: str) -> None:
        """The server crossed a bound that the session survives (the answer was thrown
        away or clipped): finish the job, but never hand the session to another."""
        if self._irregular is None:
            self._irregular = what
            log.info("the IMAP session to %s will not be reused: %s", self._endpoint.address, what)

    def noop(self) -> None:
        """NOOP: proves the connection still answers (a pooled session, before reuse)."""
        self._require_open()
        with self._errors("checking the connection"):
            self._command_ok("checking the connection", "NOOP")

    def _starttls(self, context: ssl.SSLContext | None) -> None:
        if "STARTTLS" not in {c.upper() for c in self._imap.capabilities}:
            # Continuing in plaintext would send the password in the clear; a missing
            # STARTTLS can also mean someone in the path stripped it.
            raise MailConnectionError(
                f"the IMAP server at {self._endpoint.address} does not offer STARTTLS; "
                "refusing to continue without TLS"
            )
        try:
            self.round_trips += 2  # STARTTLS, then imaplib re-reads CAPABILITY
            self._client.starttls(context)
            # STARTTLS put a plain socket file on the new TLS socket: bound it again.
            self._imap.file = BoundedReader(self._imap.sock, self._endpoint.limits)
            self._arm(self._endpoint.limits.login_timeout, "logging in")
        except CapabilityError as exc:  # pragma: no cover - checked above
            raise MailConnectionError(str(exc)) from exc

    def _login(self) -> None:
        ep = self._endpoint
        imap = self._imap
        caps = {c.upper() for c in imap.capabilities}
        if ep.sasl is not None:
            if f"AUTH={ep.sasl}" not in caps:
                raise MailAuthError(
                    f"the IMAP server at {ep.address} does not offer {ep.sasl} (OAuth2) logins"
                )
            login_with_refresh(ep, self._authenticate_oauth)
            return
        ascii_credentials = ep.username.isascii() and ep.password.isascii()
        try:
            self.round_trips += 1
            if ascii_credentials and "LOGINDISABLED" not in caps:
                # LOGIN is one round trip and universal. imaplib leaves the user name
                # unquoted, so quote it here (names may contain spaces or quotes).
                imap.login(imap._quote(ep.username), ep.password)
            elif "AUTH=PLAIN" in caps:
                # imaplib sends LOGIN arguments as ASCII; SASL PLAIN carries UTF-8.
                credentials = f"\0{ep.username}\0{ep.password}"
                imap.authenticate("PLAIN", lambda _challenge: credentials)
            else:
                raise MailAuthError(
                    "the IMAP server does not allow logging in on this connection"
                    + (" without TLS; use TLS or STARTTLS" if ep.encryption == "none" else "")
                )
        except imaplib.IMAP4.abort:
            raise
        except imaplib.IMAP4.error as exc:
            raise self._login_error(exc) from None
        finally:
            # imaplib keeps the last command lines (the LOGIN line holds the password)
            # in a debug ring buffer; do not leave it lying around in memory.
            cmd_log = getattr(imap, "_cmd_log", None)
            if isinstance(cmd_log, dict):
                cmd_log.clear()

    def _authenticate_oauth(self, token: str) -> None:
        ep = self._endpoint
        imap = self._imap
        assert ep.sasl is not None
        mechanism = ep.sasl
        first = initial_response(mechanism, ep.username, token)
        refusal: list[str] = []

        def respond(challenge: bytes) -> bytes:
            # imaplib has no SASL-IR: the server's first "+" is empty and gets the
            # credentials; a second one carries the server's error for the refused token.
            if not refusal and not challenge:
                refusal.append("")
                return first
            refusal.append(describe_challenge(challenge))
            return error_reply(mechanism)

        try:
            self.round_trips += 1
            imap.authenticate(mechanism, respond)
        except imaplib.IMAP4.abort:
            raise
        except imaplib.IMAP4.error as exc:
            text = redact(_text(exc.args[0] if exc.args else exc), token)
            code_match = _RESPONSE_CODE_RE.match(text)
            code = code_match.group(1).upper() if code_match else ""
            if code in ("UNAVAILABLE", "INUSE", "LIMIT"):
                raise MailConnectionError(
                    f"the IMAP server at {ep.address} cannot log in now: {text}"
                ) from None
            detail = "; ".join(r for r in refusal if r)
            raise TokenRefused(
                f"the IMAP server refused the OAuth2 access token ({text}"
                + (f"; {detail}" if detail else "")
                + ")"
            ) from None
        finally:
            cmd_log = getattr(imap, "_cmd_log", None)
            if isinstance(cmd_log, dict):
                cmd_log.clear()

    def _login_error(self, exc: imaplib.IMAP4.error) -> MailError:
        text = _text(exc.args[0] if exc.args else exc)
        text = redact(text, self._endpoint.password)
        code_match = _RESPONSE_CODE_RE.match(text)
        code = code_match.group(1).upper() if code_match else ""
        # RFC 5530 response codes separate "try later" from "wrong password".
        if code in ("UNAVAILABLE", "INUSE", "LIMIT"):
            return MailConnectionError(
                f"the IMAP server at {self._endpoint.address} cannot log in now: {text}"
            )
        if code == "PRIVACYREQUIRED":
            return MailAuthError(f"the IMAP server requires TLS before logging in: {text}")
        return MailAuthError(f"the IMAP server rejected the username or password ({text})")

    def _after_login(self) -> None:
        imap = self._imap
        # Servers usually put the post-login capabilities into the LOGIN reply; imaplib
        # files that response code under untagged "CAPABILITY".
        caps = imap.untagged_responses.pop("CAPABILITY", None)
        if not caps:
            self._command_ok("reading capabilities", "CAPABILITY")
            caps = imap.untagged_responses.pop("CAPABILITY", None) or [b""]
        self.capabilities = frozenset(_text(caps[-1]).upper().split())
        has_condstore = "CONDSTORE" in self.capabilities
        has_qresync = "QRESYNC" in self.capabilities
        if "ENABLE" in self.capabilities and (has_condstore or has_qresync):
            # QRESYNC must be enabled before VANISHED may be used (RFC 7162 3.2.3); it
            # implies CONDSTORE, which then applies to every SELECT of the session.
            wanted = ["CONDSTORE"] + (["QRESYNC"] if has_qresync else [])
            imap.untagged_responses.pop("ENABLED", None)
            self._command_ok("enabling CONDSTORE", "ENABLE", *wanted)
            enabled = set()
            for line in imap.untagged_responses.pop("ENABLED", []):
                enabled.update(_text(line).upper().split())
            self._enabled_condstore = bool(enabled & {"CONDSTORE", "QRESYNC"})
            self.supports_qresync = "QRESYNC" in enabled
        self.supports_condstore = self._enabled_condstore or has_condstore

    @property
    def tls_version(self) -> str | None:
        """The negotiated TLS version (``"TLSv1.3"``), or ``None`` for plaintext/closed."""
        sock = getattr(self._imap, "sock", None)
        return sock.version() if isinstance(sock, ssl.SSLSocket) else None

    # ------------------------------------------------------------------ helpers

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Translate imaplib/socket/TLS exceptions raised while ``action`` into MailErrors."""
        where = self._endpoint.address
        password = self._endpoint.password
        if action != "connecting":
            self._arm(self._endpoint.limits.command_timeout, action)
        try:
            yield
        except MailError:
            raise
        except imaplib.IMAP4.readonly as exc:
            raise MailProtocolError(
                f"the folder became read-only while {action}: {redact(_text(exc), password)}"
            ) from exc
        except imaplib.IMAP4.abort as exc:
            # abort = the connection is unusable (EOF, BYE, garbage); nothing to log out.
            self._broken = True
            raise MailConnectionError(
                f"the IMAP connection to {where} broke while {action}: "
                f"{redact(_text(exc), password)}"
            ) from exc
        except imaplib.IMAP4.error as exc:
            text = redact(_text(exc), password)
            if action == "connecting":
                # e.g. a POP3 or SMTP greeting on the configured port
                raise MailProtocolError(
                    f"the server at {where} did not greet like an IMAP server ({text})"
                ) from exc
            raise MailProtocolError(f"the IMAP server at {where} refused {action}: {text}") from exc
        except (OSError, EOFError) as exc:
            self._broken = True
            description, cert_error = describe_network_error(exc)
            description = redact(description, password)
            if action == "connecting":
                message = f"cannot connect to the IMAP server at {where}: {description}"
            else:
                message = f"the IMAP connection to {where} failed while {action}: {description}"
            raise MailConnectionError(message, certificate_error=cert_error) from exc

    def _arm(self, seconds: float, phase: str) -> None:
        """Give the server ``seconds`` from now for ``phase`` (see :class:`BoundedReader`)."""
        reader = getattr(self._imap, "file", None)
        if isinstance(reader, BoundedReader):
            reader.arm(seconds, phase)

    def _take_discarded(self) -> int | None:
        reader = getattr(self._imap, "file", None)
        size = reader.take_discarded() if isinstance(reader, BoundedReader) else None
        if size is not None:
            self._mark_irregular("a literal over the size cap was thrown away")
        return size

    def _command(self, name: str, *args: str | bytes | None) -> tuple[str, list[Any]]:
        """Send one command and wait for its completion; returns imaplib's (typ, data)."""
        self.round_trips += 1
        typ, data = self._imap._simple_command(name, *args)
        return typ, data

    def _command_ok(self, action: str, name: str, *args: str | bytes | None) -> list[Any]:
        typ, data = self._command(name, *args)
        if typ != "OK":
            raise MailProtocolError(
                f"the IMAP server refused {action}: "
                f"{redact(_text(data[-1] if data else b''), self._endpoint.password)}"
            )
        return data

    def _require_open(self) -> Any:
        if self._imap is None:
            raise RuntimeError("the IMAP session is not open (use it as a context manager)")
        return self._imap

    def _require_selected(self, *, writable: bool = False) -> Any:
        imap = self._require_open()
        if self._selected is None:
            raise RuntimeError("no folder is selected; call select() first")
        if writable and self._readonly:
            raise RuntimeError(
                f"folder {self._selected!r} is selected read-only; "
                "select it with readonly=False to change messages"
            )
        return imap

    # ------------------------------------------------------------------ folders

    def list_folders(self, with_status: bool = False) -> list[RemoteFolder]:
        """List every folder, with special-use attributes where the server has them.

        Uses ``LIST "" "*" RETURN (SPECIAL-USE)`` when the server supports it (RFC 6154
        with LIST-EXTENDED), else plain ``LIST`` (many servers include the attributes there
        anyway). With ``with_status`` and a server offering LIST-STATUS (RFC 5819), every
        folder's UIDVALIDITY, UIDNEXT, message count and HIGHESTMODSEQ come in the same
        round trip (``RemoteFolder.status``). Raises the session errors.
        """
        imap = self._require_open()
        with self._errors("listing folders"):
            imap.untagged_responses.pop("LIST", None)
            imap.untagged_responses.pop("STATUS", None)
            args: list[str] = ['""', '"*"']
            returns: list[str] = []
            if {"SPECIAL-USE", "LIST-EXTENDED"} <= self.capabilities:
                returns.append("SPECIAL-USE")
            if with_status and "LIST-STATUS" in self.capabilities:
                items = "UIDVALIDITY UIDNEXT MESSAGES"
                if self.supports_condstore:
                    items += " HIGHESTMODSEQ"
                returns.append(f"STATUS ({items})")
            if returns:
                args += ["RETURN", f"({' '.join(returns)})"]
            self._command_ok("listing folders", "LIST", *args)
            statuses = _parse_statuses(imap.untagged_responses.pop("STATUS", []))
            lines = [x for x in imap.untagged_responses.pop("LIST", []) if x not in (b"", None)]
            folders = []
            parsed = parse_response(lines) if lines else ()
            for i in range(0, len(parsed) - 2, 3):
                raw_flags, delimiter, raw_name = parsed[i : i + 3]
                flags = tuple(_text(f) for f in raw_flags)
                lowered = {f.lower() for f in flags}
                special = next(
                    (_SPECIAL_BY_LOWER[f] for f in lowered if f in _SPECIAL_BY_LOWER), None
                )
                name = str(raw_name) if isinstance(raw_name, int) else decode_utf7(raw_name)
                if "\x00" in name:
                    # IMAP allows no NUL anywhere (RFC 3501 CHAR8), PostgreSQL text holds
                    # none, and a folder is known by its whole name: such a folder cannot
                    # be mirrored, and the others are.
                    log.warning("leaving out a folder whose name has a NUL: %r", name[:200])
                    continue
                folders.append(
                    RemoteFolder(
                        name=name,
                        delimiter=_delimiter(delimiter),
                        flags=flags,
                        special_use=special,
                        selectable=not lowered & {"\\noselect", "\\nonexistent"},
                        status=statuses.get(name),
                    )
                )
            return folders

    def find_special_folder(
        self, use: str, folders: Sequence[RemoteFolder] | None = None
    ) -> str | None:
        """Name of the folder with special use ``use`` (``"\\\\Sent"``, ``"Junk"``, ...).

        Prefers the server's special-use attribute; falls back to well-known names
        (``Sent Items``, ``Spam``, ``Deleted Items``, ...) compared case-insensitively with
        the last path component of selectable folders. ``None`` if nothing matches.
        ``folders``: what :meth:`list_folders` just returned (listed here when not given).
        """
        canonical = _SPECIAL_BY_LOWER.get((use if use.startswith("\\") else "\\" + use).lower())
        if canonical is None:
            raise ValueError(f"unknown special use {use!r}; expected one of {SPECIAL_USES}")
        if folders is None:
            folders = self.list_folders()
        for folder in folders:
            if folder.special_use == canonical and folder.selectable:
                return folder.name
        names = _FALLBACK_SPECIAL_NAMES.get(canonical, ())
        for candidate in names:  # in order of preference
            for folder in folders:
                leaf = (
                    folder.name.rsplit(folder.delimiter, 1)[-1] if folder.delimiter else folder.name
                )
                if folder.selectable and leaf.lower() == candidate:
                    return folder.name
        return None

    def create_folder(self, name: str) -> None:
        """Create folder ``name``; a folder that already exists is not an error.

        Raises :class:`MailProtocolError` when the server refuses for another reason.
        """
        imap = self._require_open()
        with self._errors(f"creating folder {name!r}"):
            typ, data = self._command("CREATE", _folder_arg(name))
            text = _text(data[-1] if data else b"")
            if typ != "OK" and "[ALREADYEXISTS]" not in text.upper():
                raise MailProtocolError(
                    f"the IMAP server refused to create folder {name!r}: "
                    f"{redact(text, self._endpoint.password)}"
                )
            imap.untagged_responses.pop("LIST", None)

    def status(self, name: str) -> FolderState | None:
        """Folder ``name``'s UIDVALIDITY, UIDNEXT and message count (``STATUS``), without
        opening it; ``None`` when the answer lacks any of them.

        Raises :class:`MailProtocolError` when the server refuses (no such folder).
        """
        imap = self._require_open()
        with self._errors(f"reading the status of {name!r}"):
            imap.untagged_responses.pop("STATUS", None)
            self._command_ok(
                f"reading the status of {name!r}",
                "STATUS",
                _folder_arg(name),
                "(UIDVALIDITY UIDNEXT MESSAGES)",
            )
            states = _parse_statuses(imap.untagged_responses.pop("STATUS", []))
            # One folder was asked for: an answer naming another is not taken for it.
            return states.get(name)

    def select(self, name: str, readonly: bool = True) -> FolderState:
        """Open folder ``name`` (EXAMINE when ``readonly``, else SELECT) and return its state.

        With CONDSTORE the state includes ``highestmodseq`` (``None`` for NOMODSEQ
        folders). Raises :class:`MailProtocolError` if the folder does not exist or
        cannot be opened; no folder is selected afterwards in that case.
        """
        imap = self._require_open()
        with self._errors(f"opening folder {name!r}"):
            # A stale EXISTS/UIDNEXT/READ-ONLY from earlier commands would be read as this
            # folder's state (imaplib's own select() does the same flush).
            imap.untagged_responses.clear()
            imap.is_readonly = readonly
            self._selected = None
            args: list[str | bytes] = [_folder_arg(name)]
            if self.supports_condstore and not self._enabled_condstore:
                args.append("(CONDSTORE)")  # CONDSTORE without ENABLE: per SELECT
            typ, data = self._command("EXAMINE" if readonly else "SELECT", *args)
            if typ != "OK":
                imap.state = "AUTH"
                raise MailProtocolError(
                    f"cannot open folder {name!r}: "
                    f"{redact(_text(data[-1] if data else b''), self._endpoint.password)}"
                )
            imap.state = "SELECTED"
            ur = imap.untagged_responses
            if not readonly and "READ-ONLY" in ur:
                raise MailProtocolError(f"folder {name!r} can only be opened read-only")
            try:
                uidvalidity = int(ur["UIDVALIDITY"][-1])
                exists = int(ur["EXISTS"][-1])
            except (KeyError, ValueError, IndexError):
                raise MailProtocolError(
                    f"the IMAP server did not report UIDVALIDITY/EXISTS for {name!r}"
                ) from None
            highestmodseq: int | None = None
            if self.supports_condstore and "HIGHESTMODSEQ" in ur and "NOMODSEQ" not in ur:
                highestmodseq = int(ur["HIGHESTMODSEQ"][-1])
            self._selected = name
            self._readonly = readonly
            # RFC 3501 makes UIDNEXT mandatory, but some servers omit it.
            uidnext = int(ur["UIDNEXT"][-1]) if "UIDNEXT" in ur else max(self.uids(), default=0) + 1
            ur.clear()
            self._state = FolderState(uidvalidity, uidnext, exists, highestmodseq)
            return self._state

    def unselect(self) -> None:
        """Leave the selected folder without expunging anything.

        UNSELECT (RFC 3691) where offered; otherwise CLOSE, which expunges nothing on a
        folder opened read-only (a read-write one is opened again read-only first).
        Servers such as Courier refuse an APPEND to the folder that is selected
        read-only, so a caller that examined a folder leaves it before appending there.
        """
        imap = self._require_open()
        if self._selected is None:
            return
        name = self._selected
        with self._errors(f"leaving folder {name!r}"):
            if "UNSELECT" not in self.capabilities and not self._readonly:
                self.select(name, readonly=True)
            self._command_ok(
                f"leaving folder {name!r}",
                "UNSELECT" if "UNSELECT" in self.capabilities else "CLOSE",
            )
            imap.state = "AUTH"
            self._selected = None
            self._state = None

    # ------------------------------------------------------------------ message lists

    def uids(self) -> list[int]:
        """All UIDs in the selected folder, ascending (``UID SEARCH ALL``)."""
        return self._uid_search("ALL")

    def uids_above(self, uid: int) -> list[int]:
        """UIDs greater than ``uid``, ascending; empty when nothing new arrived.

        ``UID n+1:*`` always matches the highest UID present even when it is <= n (``*``
        is the largest UID in use), so the result is filtered.
        """
        if uid < 0:
            raise ValueError("uid must not be negative")
        return [u for u in self._uid_search(f"UID {uid + 1}:*") if u > uid]

    def uids_with_header(
        self,
        name: str,
        value: str,
        *,
        newest: int | None = None,
        among: Sequence[int] | None = None,
    ) -> list[int]:
        """UIDs of messages whose header ``name`` contains ``value`` (``SEARCH HEADER``).

        For finding a message this service stored before (by its ``Message-ID``), so a
        repeated APPEND can be avoided. With ``newest``, only the selected folder's
        ``newest`` last messages are searched (by sequence number): the server reads the
        headers of those alone instead of the whole folder's. With ``among`` (at most
        1,000 UIDs), only those messages are searched. ``value`` must be printable
        ASCII (no CHARSET is sent); raises ``ValueError`` otherwise or for a header name
        that is not a token.
        """
        if not _HEADER_NAME_RE.fullmatch(name):
            raise ValueError(f"{name!r} is not a header name")
        if not value or not all(" " <= c <= "~" for c in value):
            raise ValueError("the searched header value must be printable ASCII")
        quoted = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        within = ""
        if newest is not None:
            exists = self._state.exists if self._state is not None else 0
            if exists == 0:
                return []
            within = f"{max(1, exists - newest + 1)}:* "
        if among is not None:
            if not among:
                return []
            if len(among) > 1000:
                raise ValueError("at most 1,000 UIDs can be searched among")
            [uid_set] = _uid_sets(among, 1000)
            within += f"UID {uid_set} "
        return self._uid_search(f"{within}HEADER {name} {quoted}")

    def _uid_search(self, criteria: str) -> list[int]:
        imap = self._require_selected()
        with self._errors("searching messages"):
            ur = imap.untagged_responses
            ur.pop("ESEARCH", None)
            ur.pop("SEARCH", None)
            found: set[int] = set()
            if "ESEARCH" in self.capabilities:
                # ESEARCH answers with ranges (1:5000,5002) instead of every number:
                # smaller, and it keeps huge mailboxes under imaplib's 1 MB line limit.
                self._command_ok("searching messages", "UID", "SEARCH", "RETURN", "(ALL)", criteria)
                ranges: list[tuple[int, int]] = []
                for line in ur.pop("ESEARCH", []):
                    match = _ESEARCH_ALL_RE.search(line if isinstance(line, bytes) else b"")
                    if match:
                        ranges.extend(UidRanges.parse(match.group(1).decode()).listed)
                found.update(self._believable_uids(UidRanges(ranges)))
            else:
                self._command_ok("searching messages", "UID", "SEARCH", criteria)
                for line in ur.pop("SEARCH", []):
                    if isinstance(line, bytes):
                        # The line is bounded by the line cap, so its numbers are too.
                        found.update(int(x) for x in line.split() if x.isdigit())
                if len(found) > MAX_FOLDER_UIDS:
                    raise MailProtocolError(
                        f"the IMAP server reported {len(found)} messages in one folder, "
                        f"more than the {MAX_FOLDER_UIDS} possible here"
                    )
            return sorted(found)

    def _believable_uids(self, ranges: UidRanges) -> Iterator[int]:
        """The UIDs of ``ranges`` that can exist in the selected folder (bounded count).

        UIDs are below UIDNEXT, and a folder holds no more UIDs than messages (EXISTS,
        as last reported): a set beyond either is a server's mistake or a hostile one.
        """
        state = self._state
        if state is not None:
            clipped = ranges.clip(1, max(state.uidnext - 1, 0))
            if len(clipped) != len(ranges):
                self._mark_irregular("UIDs at or above UIDNEXT were reported")
            ranges = clipped
            exists = state.exists
            for value in self._imap.untagged_responses.get("EXISTS", []):
                with suppress(ValueError, TypeError):
                    exists = max(exists, int(value))
            limit = min(exists, MAX_FOLDER_UIDS)
        else:
            limit = MAX_FOLDER_UIDS
        return ranges.numbers(limit, "messages in one folder")

    def flags(self, uids: Sequence[int] | None = None) -> dict[int, tuple[str, ...]]:
        """Flags of ``uids`` (or of every message when ``None``), keyed by UID.

        Reads one FETCH response at a time, so a full sweep of a large folder does not
        build one huge response in memory. UIDs that no longer exist are absent.
        """
        self._require_selected()
        if uids is None:
            sets = ["1:*"]
            wanted: set[int] | None = None
        else:
            wanted = set(uids)
            sets = _uid_sets(wanted, _FLAG_CHUNK)
        result: dict[int, tuple[str, ...]] = {}
        with (
            self._errors("reading flags"),
            closing(self._uid_fetch(sets, "(UID FLAGS)", action="reading flags")) as stream,
        ):
            for uid, data in stream:
                if b"FLAGS" in data and (wanted is None or uid in wanted):
                    result[uid] = _flags(data[b"FLAGS"])
        return result

    def changed_since(self, modseq: int) -> tuple[dict[int, tuple[str, ...]], int | None]:
        """Flags of messages changed after mod-sequence ``modseq``, and the value to store.

        Returns ``(flags_by_uid, highestmodseq)`` where ``highestmodseq`` is the folder's
        HIGHESTMODSEQ reported when it was selected: every change up to it is included,
        and a change made later is reported again next time (harmless) rather than lost.

        Without CONDSTORE (or on a NOMODSEQ folder) this falls back to a full flag sweep
        and returns ``None`` as the mod-sequence.
        """
        self._require_selected()
        state = self._state
        if not self.supports_condstore or state is None or state.highestmodseq is None:
            return self.flags(), None
        result: dict[int, tuple[str, ...]] = {}
        stream = self._uid_fetch(
            ["1:*"], "(UID FLAGS)", f"(CHANGEDSINCE {int(modseq)})", action="reading changes"
        )
        with self._errors("reading changed flags"), closing(stream):
            for uid, data in stream:
                if b"FLAGS" in data:
                    result[uid] = _flags(data[b"FLAGS"])
        return result, state.highestmodseq

    def vanished_since(self, modseq: int | None, known_uids: Iterable[int]) -> list[int]:
        """Which of ``known_uids`` no longer exist in the selected folder, ascending.

        With QRESYNC (and a ``modseq`` from an earlier sync of this UIDVALIDITY) asks the
        server for UIDs expunged since ``modseq`` (``UID FETCH ... (CHANGEDSINCE m
        VANISHED)``), which costs little however big the folder is. Otherwise, or when
        ``modseq`` is ``None``, compares ``known_uids`` with the current UID list. Either
        way the answer is limited to ``known_uids``: QRESYNC may report UIDs we never had.
        """
        imap = self._require_selected()
        known = set(known_uids)
        if not known:
            return []
        if not self.supports_qresync or modseq is None:
            return sorted(known.difference(self.uids()))
        gone: set[int] = set()
        imap.untagged_responses.pop("VANISHED", None)
        stream = self._uid_fetch(
            [f"1:{max(known)}"],
            "(UID)",
            f"(CHANGEDSINCE {int(modseq)} VANISHED)",
            action="reading expunged messages",
        )
        with self._errors("reading expunged messages"), closing(stream):
            for _ in stream:
                pass  # FETCH responses name changed messages; only VANISHED matters here
            for line in imap.untagged_responses.pop("VANISHED", []):
                text = _text(line).strip()
                if text.upper().startswith("(EARLIER)"):
                    text = text[len("(EARLIER)") :].strip()
                # Only what we know is ever expanded: "1:4294967295" costs len(known).
                gone.update(UidRanges.parse(text).intersect(known))
        return sorted(gone)

    # ------------------------------------------------------------------ fetching

    def fetch(self, uids: Sequence[int], batch_size: int = 500) -> Iterator[FetchedMessage]:
        """Fetch whole messages (``BODY.PEEK[]``, so ``\\Seen`` is not set), lazily.

        Messages come in ascending UID order in batches of ``batch_size`` UID FETCH
        commands, with the next batch's command sent before the current one is read.
        Only one message at a time is held besides what the consumer keeps. UIDs that do
        not exist (or were expunged meanwhile) are skipped silently: compare the UIDs you
        get with the ones you asked for.

        Stopping the iteration early reads and discards the rest of the outstanding
        batches, so the session stays usable.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._require_selected()
        wanted = set(uids)
        if not wanted:
            return iter(())
        return self._fetch_messages(wanted, batch_size)

    def _fetch_messages(self, wanted: set[int], batch_size: int) -> Iterator[FetchedMessage]:
        modseq_items = self._state_has_modseq()
        items = _MESSAGE_ITEMS_MODSEQ if modseq_items else _MESSAGE_ITEMS
        head_items = _HEADER_ITEMS_MODSEQ if modseq_items else _HEADER_ITEMS
        cap = self._endpoint.limits.max_message_bytes
        # RFC822.SIZE first: a body above the cap is never asked for, only its headers.
        sizes = self._sizes(wanted)
        commands: list[tuple[str, str]] = []
        ordered = sorted(wanted)
        for start in range(0, len(ordered), batch_size):
            chunk = ordered[start : start + batch_size]
            large = [uid for uid in chunk if sizes.get(uid, 0) > cap]
            small = set(chunk).difference(large)
            commands += [(uid_set, head_items) for uid_set in _uid_sets(large, batch_size)]
            commands += [(uid_set, items) for uid_set in _uid_sets(small, batch_size)]
        seen: set[int] = set()
        stream = self._uid_fetch(
            commands,
            items,
            action="fetching messages",
            depth=_FETCH_PIPELINE_DEPTH,
            parse=_parse_message_fetch,
        )
        # closing(): if our consumer stops early, the inner generator must drain the
        # outstanding commands now, not whenever it happens to be garbage-collected.
        with self._errors("fetching messages"), closing(stream):
            for uid, data in stream:
                unreadable = data.get(_UNREADABLE)
                if unreadable is not None:
                    if uid in wanted and uid not in seen:
                        seen.add(uid)
                        yield FetchedMessage(
                            uid=uid,
                            flags=(),
                            internaldate=None,
                            size=sizes.get(uid, 0),
                            raw=b"",
                            modseq=None,
                            unreadable=str(unreadable),
                        )
                    continue
                raw = data.get(b"BODY[]")
                too_large = False
                if raw is None:
                    raw = next((v for k, v in data.items() if k.startswith(b"BODY[HEADER]")), None)
                    too_large = raw is not None
                discarded = data.get(_DISCARDED)
                if discarded is not None:
                    # The server sent a body above the cap although its RFC822.SIZE
                    # said otherwise: it was read and thrown away.
                    raw, too_large = b"", True
                # Unsolicited FETCHes (flag changes by other clients) carry no body.
                if raw is None or uid not in wanted or uid in seen:
                    continue
                seen.add(uid)
                modseq = data.get(b"MODSEQ")
                size = data.get(b"RFC822.SIZE")
                yield FetchedMessage(
                    uid=uid,
                    flags=_flags(data.get(b"FLAGS", ())),
                    internaldate=_utc(data.get(b"INTERNALDATE")),
                    size=max(
                        size if isinstance(size, int) else len(raw),
                        discarded or 0,
                        sizes.get(uid, 0),
                    ),
                    raw=bytes(raw) if isinstance(raw, bytes | bytearray) else b"",
                    modseq=int(modseq[0]) if modseq else None,
                    too_large=too_large,
                )

    def fetch_part(self, uid: int, section: str) -> bytes | None:
        """One body part of message ``uid``, still in its transfer encoding, or None.

        ``UID FETCH <uid> (UID BODY.PEEK[<section>])``: ``section`` is an IMAP part number
        (``"2"``, ``"1.2"``); ``\\Seen`` is left alone. None when the selected folder holds
        no message ``uid`` (expunged). A part above ``max_message_bytes`` is read and
        thrown away, and raises :class:`MailProtocolError`, like any other refusal;
        ``ValueError`` for a section that is not a part number.
        """
        if not _SECTION_RE.fullmatch(section):
            raise ValueError(f"{section!r} is not an IMAP part number")
        if uid < 1:
            raise ValueError("UIDs are positive integers")
        self._require_selected()
        key = f"BODY[{section}]".encode()
        found: bytes | None = None
        stream = self._uid_fetch(
            [str(uid)], f"(UID BODY.PEEK[{section}])", action="fetching an attachment"
        )
        with self._errors("fetching an attachment"), closing(stream):
            for answer_uid, data in stream:
                if answer_uid != uid:
                    continue  # an unsolicited FETCH (another client changed flags)
                discarded = data.get(_DISCARDED)
                if discarded is not None:
                    raise MailProtocolError(
                        f"the IMAP server sent a part of {discarded} bytes, more than "
                        "MAX_MESSAGE_BYTES allows"
                    )
                unreadable = data.get(_UNREADABLE)
                if unreadable is not None:
                    raise MailProtocolError(str(unreadable))
                if key in data:
                    value = data[key]
                    found = bytes(value) if isinstance(value, bytes | bytearray) else b""
        return found

    def _sizes(self, wanted: set[int]) -> dict[int, int]:
        """``RFC822.SIZE`` of each of ``wanted`` that exists, by UID (one command)."""
        sizes: dict[int, int] = {}
        stream = self._uid_fetch(
            _uid_sets(wanted, _FLAG_CHUNK),
            "(UID RFC822.SIZE)",
            action="reading message sizes",
            parse=_parse_size_fetch,
        )
        with self._errors("reading message sizes"), closing(stream):
            for uid, data in stream:
                size = data.get(b"RFC822.SIZE")
                if uid in wanted and isinstance(size, int):
                    sizes[uid] = size
        return sizes

    def _state_has_modseq(self) -> bool:
        return bool(
            self.supports_condstore and self._state and self._state.highestmodseq is not None
        )

    def _uid_fetch(
        self,
        sets: Iterable[str | tuple[str, str]],
        items: str,
        modifiers: str | None = None,
        *,
        action: str,
        depth: int = 1,
        parse: Callable[[list[Any]], Iterable[dict[bytes, Any]]] | None = None,
    ) -> Generator[tuple[int, dict[bytes, Any]], None, None]:
        """Run ``UID FETCH <set> items [modifiers]`` per set, yielding ``(uid, items)``.

        Up to ``depth`` commands are in flight. Responses are read one at a time from
        imaplib (each ``_get_response`` call reads one whole response, literals included)
        and parsed immediately, instead of letting imaplib accumulate a batch. Responses
        without a UID (unsolicited, sequence-numbered) are skipped. Must be called inside
        ``self._errors``.
        """
        imap = self._imap
        untagged = imap.untagged_responses
        tagged = imap.tagged_commands
        parse = parse or _parse_fetch
        pending: deque[bytes] = deque()
        set_iter = iter(sets)

        def send_next() -> None:
            for entry in set_iter:
                # An entry is a UID set, or (UID set, items) for a command of its own.
                uid_set, what = entry if isinstance(entry, tuple) else (entry, items)
                pending.append(imap._command("UID", "FETCH", uid_set, what, modifiers))
                self.round_trips += 1
                return

        untagged.pop("FETCH", None)
        try:
            for _ in range(depth):
                send_next()
            while pending:
                tag = pending[0]
                while tagged[tag] is None:
                    imap._get_response()
                    discarded = self._take_discarded()
                    parts = untagged.pop("FETCH", None)
                    if parts:
                        # A literal thrown away cannot be parsed: its UID is all we need.
                        parsed = (
                            _parse_or_unreadable(parse, parts)
                            if discarded is None
                            else _discarded(parts, discarded)
                        )
                        for data in parsed:
                            if _UNREADABLE in data:
                                self._mark_irregular("an answer could not be read")
                            uid = data.get(b"UID")
                            if uid is not None:
                                yield uid, data
                    # Each response of the stream gets its own deadline and byte count.
                    self._arm(self._endpoint.limits.command_timeout, action)
                    if "BYE" in untagged:
                        raise imaplib.IMAP4.abort(_text(untagged["BYE"][-1]))
                pending.popleft()
                typ, data = tagged.pop(tag)
                if typ != "OK":
                    text = _text(data[-1] if data else b"")
                    # EXPUNGEISSUED: another client expunged some of the messages; the
                    # rest were returned and the caller sees which UIDs are missing.
                    if not (typ == "NO" and "EXPUNGEISSUED" in text.upper()):
                        raise MailProtocolError(
                            f"the IMAP server refused {action}: "
                            f"{redact(text, self._endpoint.password)}"
                        )
                send_next()
        finally:
            if pending:
                self._drain(pending)

    def _drain(self, pending: deque[bytes]) -> None:
        """Read and discard the responses of outstanding commands (early stop, errors)."""
        imap = self._imap
        if imap is None or self._broken:
            return
        try:
            for tag in pending:
                while imap.tagged_commands.get(tag, ()) is None:
                    imap._get_response()
                    imap.untagged_responses.pop("FETCH", None)
                    self._arm(self._endpoint.limits.command_timeout, "finishing a fetch")
                imap.tagged_commands.pop(tag, None)
        except Exception:
            # The connection is in an unknown state; make sure nobody reuses it.
            self._broken = True
            with suppress(Exception):  # already failing; keep the first error
                imap.shutdown()
        finally:
            pending.clear()

    # ------------------------------------------------------------------ changing

    def append(
        self,
        folder: str,
        raw: bytes,
        flags: Sequence[str] = (),
        when: datetime | None = None,
    ) -> int | None:
        """Store message ``raw`` in ``folder``; returns its UID, or ``None`` if unknown.

        The UID comes from APPENDUID (UIDPLUS). ``when`` sets the INTERNALDATE (naive
        datetimes are taken as UTC). imaplib converts bare LF line ends to CRLF, as IMAP
        requires. Raises :class:`MailProtocolError` if the folder does not exist.
        """
        imap = self._require_open()
        flag_text = _flag_list(flags)
        date_arg: datetime | None = None
        if when is not None:
            date_arg = when if when.tzinfo else when.replace(tzinfo=UTC)
        with self._errors(f"appending to {folder!r}"):
            self.round_trips += 1
            typ, data = imap.append(_folder_arg(folder), flag_text or None, date_arg, raw)
            if typ != "OK":
                raise MailProtocolError(
                    f"the IMAP server refused to store the message in {folder!r}: "
                    f"{redact(_text(data[-1] if data else b''), self._endpoint.password)}"
                )
            imap.untagged_responses.pop("APPENDUID", None)
            match = _APPENDUID_RE.search(data[-1] if data and isinstance(data[-1], bytes) else b"")
            return int(match.group(2)) if match else None

    def add_flags(self, uids: Sequence[int], flags: Sequence[str]) -> None:
        """Add ``flags`` (system flags or keywords) to messages ``uids``."""
        self._store(uids, "+FLAGS.SILENT", flags)

    def remove_flags(self, uids: Sequence[int], flags: Sequence[str]) -> None:
        """Remove ``flags`` (system flags or keywords) from messages ``uids``."""
        self._store(uids, "-FLAGS.SILENT", flags)

    def set_keywords(self, uids: Sequence[int], keywords: Iterable[str]) -> None:
        """Make ``keywords`` the exact keyword (label) set of each message in ``uids``.

        System flags (``\\Seen`` etc.) are kept. Reads current flags, then removes the
        keywords that are not wanted and adds the wanted ones (up to three commands);
        not atomic against other clients changing keywords at the same moment.
        Raises ``ValueError`` for a keyword that is not a valid IMAP atom.
        """
        wanted = list(dict.fromkeys(keywords))
        for keyword in wanted:
            if not is_valid_keyword(keyword) or keyword.startswith("\\"):
                raise ValueError(f"{keyword!r} is not a valid IMAP keyword")
        targets = sorted(set(uids))
        if not targets:
            return
        current = self.flags(targets)
        wanted_lower = {k.lower() for k in wanted}  # keywords are case-insensitive
        unwanted = sorted(
            {
                flag
                for flags in current.values()
                for flag in flags
                if not flag.startswith("\\") and flag.lower() not in wanted_lower
            }
        )
        if unwanted:
            self._store(targets, "-FLAGS.SILENT", unwanted)
        if wanted:
            self._store(targets, "+FLAGS.SILENT", wanted)

    def _store(self, uids: Sequence[int], operation: str, flags: Sequence[str]) -> None:
        imap = self._require_selected(writable=True)
        flag_text = _flag_list(flags)
        if not flag_text or not uids:
            return
        with self._errors("changing flags"):
            for uid_set in _uid_sets(set(uids), _FLAG_CHUNK):
                self._command_ok("changing flags", "UID", "STORE", uid_set, operation, flag_text)
                # With CONDSTORE even .SILENT stores answer with FETCH (UID MODSEQ) lines.
                imap.untagged_responses.pop("FETCH", None)

    def move(self, uid: int, dest: str) -> int | None:
        """Move message ``uid`` to folder ``dest``; returns its new UID there, if known.

        Uses MOVE (RFC 6851) when offered; otherwise COPY, set ``\\Deleted``, and
        ``UID EXPUNGE`` of just this message (UIDPLUS). Without UIDPLUS the original is
        left flagged ``\\Deleted`` rather than expunging other messages flagged so.
        The new UID comes from COPYUID; ``None`` when the server does not report it.
        """
        imap = self._require_selected(writable=True)
        ur = imap.untagged_responses
        with self._errors(f"moving a message to {dest!r}"):
            ur.pop("COPYUID", None)
            if "MOVE" in self.capabilities:
                self._command_ok(
                    f"moving a message to {dest!r}", "UID", "MOVE", str(uid), _folder_arg(dest)
                )
            else:
                self._command_ok(
                    f"copying a message to {dest!r}", "UID", "COPY", str(uid), _folder_arg(dest)
                )
                self._command_ok(
                    "marking the original deleted",
                    "UID",
                    "STORE",
                    str(uid),
                    "+FLAGS.SILENT",
                    "(\\Deleted)",
                )
                if "UIDPLUS" in self.capabilities:
                    self._command_ok("expunging the original", "UID", "EXPUNGE", str(uid))
            # imaplib files the COPYUID response code (untagged OK for MOVE, tagged OK for
            # COPY) under "COPYUID": "<uidvalidity> <source set> <destination set>".
            for entry in ur.pop("COPYUID", []):
                fields = _text(entry).split()
                if len(fields) == 3:
                    target = copyuid_target(fields[1], fields[2], uid)
                    if target is not None:
                        return target
            ur.pop("FETCH", None)
            return None


# ---------------------------------------------------------------------- module helpers


def _parse_statuses(lines: Iterable[Any]) -> dict[str, FolderState]:
    """LIST-STATUS answers (``name (MESSAGES n UIDNEXT n ...)``) by decoded folder name."""
    states: dict[str, FolderState] = {}
    for line in lines:
        if not isinstance(line, bytes) or not line:
            continue
        try:
            raw_name, values = parse_response([line])
            fields = dict(zip(values[::2], values[1::2], strict=False))
            name = str(raw_name) if isinstance(raw_name, int) else decode_utf7(raw_name)
            modseq = fields.get(b"HIGHESTMODSEQ")
            states[name] = FolderState(
                uidvalidity=int(fields[b"UIDVALIDITY"]),
                uidnext=int(fields[b"UIDNEXT"]),
                exists=int(fields[b"MESSAGES"]),
                highestmodseq=int(modseq) if modseq else None,
            )
        except (KeyError, ValueError, TypeError):
            continue  # a folder without usable status is simply selected as usual
    return states


def _parse_fetch(parts: list[Any]) -> Iterable[dict[bytes, Any]]:
    """Parse one FETCH response (imaplib's pieces) with IMAPClient's general parser."""
    # uid_is_key=False keeps the UID as an item, so responses without one (unsolicited,
    # keyed by sequence number) can be told apart.
    parsed: dict[int, dict[bytes, Any]] = parse_fetch_response(parts, False, False)
    return parsed.values()


# The usual shape of a reply to _MESSAGE_ITEMS(_MODSEQ): simple items, then the body as
# the last item, e.g. b'7 (UID 9 FLAGS (\Seen $x) INTERNALDATE "02-Jan-2024 03:04:05
# +0000" RFC822.SIZE 30 MODSEQ (5) BODY[] {30}' + literal + b')'. None of these items can
# contain parentheses or quotes inside, so a regex is exact; any other shape goes to the
# general parser. This skips IMAPClient's character-by-character lexer, which was
# ~40% of fetch CPU time.
_FAST_FETCH_RE = re.compile(
    rb"\d+ \((?:UID (?P<uid>\d+) |FLAGS \((?P<flags>[^()\"]*)\) "
    rb'|INTERNALDATE "(?P<date>[^"]*)" |RFC822\.SIZE (?P<size>\d+) '
    rb"|MODSEQ \((?P<modseq>\d+)\) )*BODY\[\] \{(?P<literal>\d+)\}"
)
_INTERNALDATE_RE = re.compile(
    rb" ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)"
)
_MONTHS = {
    m.encode(): i
    for i, m in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}


def _parse_message_fetch(parts: list[Any]) -> Iterable[dict[bytes, Any]]:
    """Parse a full-message FETCH response; same result shape as :func:`_parse_fetch`."""
    if len(parts) == 2 and parts[1] == b")" and isinstance(parts[0], tuple):
        head, body = parts[0]
        match = _FAST_FETCH_RE.fullmatch(head)
        if match and match["uid"] and match["date"] and int(match["literal"]) == len(body):
            when = _parse_internaldate(match["date"])
            if when is not None:
                data: dict[bytes, Any] = {
                    b"UID": int(match["uid"]),
                    b"BODY[]": body,
                    b"INTERNALDATE": when,
                }
                if match["flags"] is not None:
                    data[b"FLAGS"] = tuple(match["flags"].split())
                if match["size"] is not None:
                    data[b"RFC822.SIZE"] = int(match["size"])
                if match["modseq"] is not None:
                    data[b"MODSEQ"] = (int(match["modseq"]),)
                return (data,)
    return _parse_fetch(parts)


_SIZE_FETCH_RE = re.compile(
    rb"\d+ \((?:UID (\d+) RFC822\.SIZE (\d+)|RFC822\.SIZE (\d+) UID (\d+))\)"
)


def _parse_size_fetch(parts: list[Any]) -> Iterable[dict[bytes, Any]]:
    """Parse a ``(UID n RFC822.SIZE n)`` response without the general parser."""
    if len(parts) == 1 and isinstance(parts[0], bytes):
        match = _SIZE_FETCH_RE.fullmatch(parts[0])
        if match:
            uid, size, size2, uid2 = match.groups()
            return ({b"UID": int(uid or uid2), b"RFC822.SIZE": int(size or size2)},)
    return _parse_fetch(parts)


_UID_ITEM_RE = re.compile(rb"\bUID (\d+)")


def _discarded(parts: list[Any], size: int) -> Iterable[dict[bytes, Any]]:
    """A FETCH response whose literal (``size`` bytes) the reader threw away."""
    head = parts[0][0] if parts and isinstance(parts[0], tuple) else parts[0] if parts else b""
    match = _UID_ITEM_RE.search(head if isinstance(head, bytes) else b"")
    if match is None:
        return ()
    return ({b"UID": int(match.group(1)), _DISCARDED: size},)


def _parse_or_unreadable(
    parse: Callable[[list[Any]], Iterable[dict[bytes, Any]]], parts: list[Any]
) -> Iterable[dict[bytes, Any]]:
    """``parse(parts)``; an answer it cannot read becomes its UID marked unreadable.

    The literal (if any) was read whole by imaplib, so the stream is still in step and
    the other messages of the command can be read. Without a UID to be found the answer
    is dropped, like an unsolicited one.
    """
    try:
        return list(parse(parts))
    except MemoryError:
        raise
    except Exception as exc:
        head = parts[0][0] if isinstance(parts[0], tuple) else parts[0]
        match = _UID_ITEM_RE.search(head if isinstance(head, bytes) else b"")
        log.warning(
            "an unreadable FETCH answer (%s%s)",
            type(exc).__name__,
            f" for UID {match.group(1).decode()}" if match else ", no UID in it",
        )
        if match is None:
            return ()
        detail = _text(exc)[:120]
        reason = f"the server's answer for this message could not be read ({detail})"
        return ({b"UID": int(match.group(1)), _UNREADABLE: reason},)


def _parse_internaldate(value: bytes) -> datetime | None:
    """``"02-Jan-2024 03:04:05 +0100"`` as an aware UTC datetime; None if malformed."""
    match = _INTERNALDATE_RE.fullmatch(value)
    if not match:
        return None
    day, mon, year, hh, mm, ss, sign, oh, om = match.groups()
    month = _MONTHS.get(mon.lower())
    if month is None:
        return None
    offset = timedelta(hours=int(oh), minutes=int(om))
    try:
        local = datetime(int(year), month, int(day), int(hh), int(mm), int(ss), tzinfo=UTC)
    except ValueError:
        return None
    return local - offset if sign == b"+" else local + offset


def _delimiter(value: object) -> str | None:
    # One character or NIL (RFC 3501 mailbox-list). Anything else is no hierarchy we can
    # follow, nor fits folders.delimiter (String(8)): the folder is read as flat, its name
    # (the folder's identity) kept whole.
    if value is None:
        return None
    text = _text(value)
    return text if len(text) == 1 and text != "\x00" else None


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _flags(raw: Iterable[bytes | str]) -> tuple[str, ...]:
    # \Recent is per-session state (the first session to see a message gets it), not a
    # property of the message; passing it on would make flags differ between connections
    # and look like changes to a sync. IMAP4rev2 dropped it for the same reason.
    return tuple(t for t in (_text(f) for f in raw) if t.lower() != "\\recent")


def _utc(value: object) -> datetime | None:
    # NIL or an unparsable date: the caller falls back to the Date header, then to the
    # time of the sync. Failing here would stop the sync at this message for good.
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:  # the server sent no zone; RFC 3501 requires one
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _folder_arg(name: str) -> bytes:
    """Folder name as an IMAP quoted string in modified UTF-7."""
    if not name or "\r" in name or "\n" in name or "\0" in name:
        raise ValueError(f"invalid folder name {name!r}")
    encoded: bytes = encode_utf7(name)
    return b'"' + encoded.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _flag_list(flags: Sequence[str]) -> str:
    """``(\\Seen kw)`` for STORE/APPEND; validates each flag so none can inject syntax."""
    if isinstance(flags, str):
        flags = [flags]  # a lone string would otherwise be split into characters
    out = []
    for flag in flags:
        if flag.startswith("\\"):
            canonical = _SYSTEM_FLAGS.get(flag.lower())
            if canonical is None:
                raise ValueError(f"{flag!r} is not a system flag that can be set")
            out.append(canonical)
        elif is_valid_keyword(flag):
            out.append(flag)
        else:
            raise ValueError(f"{flag!r} is not a valid IMAP keyword")
    return "(" + " ".join(dict.fromkeys(out)) + ")" if out else ""


def _uid_sets(uids: Iterable[int], max_count: int) -> list[str]:
    """Ascending UID sets (``1:5,9``) of at most ``max_count`` UIDs and bounded length."""
    ordered = sorted(set(uids))
    if ordered and ordered[0] < 1:
        raise ValueError("UIDs are positive integers")
    sets: list[str] = []
    for start in range(0, len(ordered), max_count):
        runs: list[str] = []
        length = 0
        chunk = ordered[start : start + max_count]
        i = 0
        while i < len(chunk):
            j = i
            while j + 1 < len(chunk) and chunk[j + 1] == chunk[j] + 1:
                j += 1
            run = str(chunk[i]) if i == j else f"{chunk[i]}:{chunk[j]}"
            if runs and length + len(run) + 1 > _MAX_SET_CHARS:
                sets.append(",".join(runs))
                runs, length = [], 0
            runs.append(run)
            length += len(run) + 1
            i = j + 1
        if runs:
            sets.append(",".join(runs))
    return sets


@contextmanager
def pooled_session(
    endpoint: MailEndpoint,
    pool: ConnectionPool[ImapSession] | None,
    owner: str,
    *,
    first: Callable[[ImapSession], object] | None = None,
) -> Iterator[ImapSession]:
    """An open session for ``endpoint``: a pooled one of ``owner`` that answers NOOP, or a
    new one; given back to ``pool`` after the block unless the block failed, broke it, or
    the server crossed a bound on the way (``ImapSession.reusable``).

    Without ``pool`` it is ``with ImapSession(endpoint)``. A session from the pool was
    opened with exactly these settings (see :mod:`email_service.mail.pool`); one that
    does not answer its NOOP is closed and replaced before the block runs. A session is
    given back with no folder selected (UNSELECT, when the block left one), so the next
    job starts where a new session would.

    ``first``, when given, is the block's first command, run on whichever session the
    block gets: on a pooled session it is the check that the session answers, in place
    of the NOOP (a round trip saved). It must be safe to run twice, as it runs again on a
    new session when the pooled one fails it.
    """
    if pool is None:
        with ImapSession(endpoint) as session:
            if first is not None:
                first(session)
            yield session
        return
    key = pool_key(owner, endpoint, "imap")
    pooled = pool.take(key)
    if pooled is not None:
        try:
            if first is None:
                pooled.noop()
            else:
                first(pooled)
        except MailError:
            log.info("a pooled IMAP session to %s was dead; opening one", endpoint.address)
            pooled.close()
            pooled = None
    if pooled is None:
        session = ImapSession(endpoint)
        session.open()
        if first is not None:
            try:
                first(session)
            except BaseException:
                session.close()
                raise
    else:
        session = pooled
    try:
        yield session
    except BaseException:
        session.close()
        raise
    if session.reusable:
        try:
            session.unselect()
        except MailError:
            session.close()
            return
        pool.give(key, session)
    else:
        session.close()
