"""A private Dovecot (IMAP, IMAPS, POP3, POP3S, LMTP) for tests.

Each :class:`Dovecot` runs its own ``dovecot -F`` master in its own process
group, from a short temp dir under ``/tmp`` (unix socket paths are limited to
about 108 bytes), listening on free loopback ports only.

Users: one passwd-file per user (``passwd.d/<email>``), not one shared file.
Dovecot re-stats a passwd-file at most once per second (``passwd_file_sync()``),
so a user appended to a shared file is often "unknown" for up to a second; a new
per-user file is read on first use, so a user added with :meth:`add_user` can
log in at once (the auth cache is off too).

See ``/work/shared/notes/mail-servers-for-tests.md`` for the facts this relies on.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import ipaddress
import itertools
import math
import os
import re
import secrets
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Self

import imapclient

DOVECOT_BIN = "/usr/sbin/dovecot"
DOVEADM_BIN = "/usr/bin/doveadm"
APT_PACKAGES = ("dovecot-core", "dovecot-imapd", "dovecot-pop3d", "dovecot-lmtpd")
INSTALL_LOCK = "/tmp/tests-servers-dovecot-install.lock"
MAIL_DOMAIN = "example.test"

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0

_APPENDUID_RE = re.compile(rb"\[APPENDUID (\d+) (\d+)\]")
# Characters Dovecot accepts in user names by default (auth_username_chars).
_EMAIL_RE = re.compile(r"[A-Za-z0-9._-]+@[A-Za-z0-9.-]+")
_user_counter = itertools.count(1)


class DovecotError(RuntimeError):
    """Dovecot could not be installed, started, or driven."""


@dataclass(frozen=True)
class MailUser:
    """A mailbox account: log in with ``email`` as user name and ``password``."""

    email: str
    password: str

    @property
    def local_part(self) -> str:
        return self.email.partition("@")[0]

    @property
    def domain(self) -> str:
        return self.email.partition("@")[2]


@dataclass(frozen=True)
class TlsCert:
    """A self-signed certificate; ``ca_file`` is the certificate itself."""

    cert_file: Path
    key_file: Path

    @property
    def ca_file(self) -> Path:
        return self.cert_file

    @classmethod
    def generate(
        cls,
        directory: Path,
        dns_names: Sequence[str] = ("localhost",),
        ip_addresses: Sequence[str] = ("127.0.0.1",),
        valid_for: timedelta = timedelta(days=2),
    ) -> TlsCert:
        """Write an EC P-256 self-signed cert (SAN DNS/IP) and its key into ``directory``."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0] if dns_names else "localhost"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tests.servers self-signed"),
            ]
        )
        now = datetime.now(UTC)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        san: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        san += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + valid_for)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        cert_file = directory / "cert.pem"
        key_file = directory / "key.pem"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.touch(mode=0o600)
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        cert_file.chmod(0o644)
        return cls(cert_file=cert_file, key_file=key_file)

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts only this certificate."""
        return ssl.create_default_context(cafile=str(self.cert_file))


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct currently-free TCP ports on ``host``."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def ensure_dovecot_installed() -> None:
    """Install the Dovecot packages with apt once, serialized by a file lock."""
    if os.path.exists(DOVECOT_BIN) and os.path.exists(DOVEADM_BIN):
        return
    if os.geteuid() != 0:
        raise DovecotError(f"{DOVECOT_BIN} is missing and we are not root to apt-get install it")
    with open(INSTALL_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(DOVECOT_BIN) and os.path.exists(DOVEADM_BIN):
            return
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        apt_opts = ["-o", "DPkg::Lock::Timeout=300", "-q"]
        for cmd in (
            ["apt-get", *apt_opts, "update"],
            ["apt-get", *apt_opts, "install", "-y", "--no-install-recommends", *APT_PACKAGES],
        ):
            proc = subprocess.run(
                cmd, check=False, env=env, capture_output=True, text=True, timeout=900
            )
            if proc.returncode != 0:
                tail = (proc.stdout + proc.stderr)[-3000:]
                raise DovecotError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{tail}")
        if not os.path.exists(DOVECOT_BIN):
            raise DovecotError(f"{DOVECOT_BIN} still missing after installing {APT_PACKAGES}")


def _read_greeting(host: str, port: int, timeout: float = 1.0) -> bytes:
    with socket.create_connection((host, port), timeout=timeout) as s:
        data = b""
        while b"\n" not in data:
            chunk = s.recv(1024)
            if not chunk:
                break
            data += chunk
        return data


class _Runtime:
    """What must be cleaned up; kept apart from :class:`Dovecot` for ``weakref.finalize``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.proc: subprocess.Popen[bytes] | None = None

    def kill(self, timeout: float = STOP_TIMEOUT, graceful: bool = False) -> None:
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        if proc.poll() is None:
            # SIGTERM to the whole group stops Dovecot in a few ms; SIGTERM to the
            # master alone (graceful) lets it shut its children down (about 1 s).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if graceful:
                    proc.send_signal(signal.SIGTERM)
                else:
                    os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        # Stragglers (imap, pop3, auth, ...) share the master's process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
        _wait_group_gone(proc.pid, timeout)

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)


class Dovecot:
    """One private Dovecot instance.

    Not started by the constructor: call :meth:`start` (or use it as a context
    manager).  :meth:`stop` / :meth:`start` restart it on the same ports with
    the mail kept; :meth:`close` stops it and deletes everything.

    ``base_dir`` is the instance's temp root; Dovecot's own ``base_dir`` (its
    sockets, e.g. ``lmtp``) is ``run_dir`` = ``base_dir / "run"``.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        cert: TlsCert | None = None,
        name: str | None = None,
        oauth2_introspection_url: str | None = None,
    ) -> None:
        # With an introspection URL, logins take XOAUTH2/OAUTHBEARER bearer tokens too
        # (Dovecot's oauth2 passdb asks that endpoint whether a token is active and whose
        # it is); password logins keep working beside them.
        self.oauth2_introspection_url = oauth2_introspection_url
        self.base_dir = Path(tempfile.mkdtemp(prefix="dc-", dir="/tmp"))
        self.base_dir.chmod(0o755)
        self._rt = _Runtime(self.base_dir)
        self._finalizer = weakref.finalize(self, self._rt.cleanup)
        self.name = name or f"tests-{self.base_dir.name}"
        self.run_dir = self.base_dir / "run"
        self.state_dir = self.base_dir / "state"
        self.mail_dir = self.base_dir / "mail"
        self.config_path = self.base_dir / "dovecot.conf"
        self.passwd_dir = self.base_dir / "passwd.d"
        self.log_path = self.base_dir / "dovecot.log"
        self.stdout_path = self.base_dir / "dovecot.stdout"
        self.lmtp_socket = self.run_dir / "lmtp"
        self.auth_client_socket = self.run_dir / "auth-client"
        self._cert = cert or TlsCert.generate(self.base_dir / "tls")
        self.ca_file = self._cert.ca_file
        self.imap_port, self.imaps_port, self.pop3_port, self.pop3s_port = free_ports(4)
        self._users: dict[str, str] = {}
        self._users_lock = threading.Lock()
        self._started_once = False
        self.last_start_seconds: float | None = None
        self._prepare()

    # ----- lifecycle -------------------------------------------------------

    @property
    def cert(self) -> TlsCert:
        return self._cert

    @property
    def running(self) -> bool:
        proc = self._rt.proc
        return proc is not None and proc.poll() is None

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def _ids(self) -> tuple[int, int]:
        if os.geteuid() == 0:
            return (int(_lookup("passwd", "nobody")), int(_lookup("group", "nogroup")))
        return (os.getuid(), os.getgid())

    def _prepare(self) -> None:
        uid, gid = self._ids()
        for d in (self.run_dir, self.state_dir, self.mail_dir, self.passwd_dir):
            d.mkdir(mode=0o755, exist_ok=True)
            d.chmod(0o755)
        os.chown(self.mail_dir, uid, gid)
        self._write_config()

    def _write_config(self) -> None:
        uid, gid = self._ids()
        d = self.base_dir
        not_root = ""
        login_chroot = ""
        if os.geteuid() != 0:
            import grp
            import pwd

            user = pwd.getpwuid(uid).pw_name
            group = grp.getgrgid(gid).gr_name
            not_root = (
                f"default_internal_user = {user}\n"
                f"default_internal_group = {group}\n"
                f"default_login_user = {user}\n"
                "service anvil {\n  chroot =\n}\n"
            )
            login_chroot = "  chroot =\n"
        mechanisms = "plain login"
        oauth2_passdb = ""
        password_mechanisms = ""
        userdb_extra = ""
        if self.oauth2_introspection_url:
            mechanisms += " xoauth2 oauthbearer"
            oauth2_conf = self.base_dir / "oauth2.conf.ext"
            oauth2_conf.write_text(
                "introspection_mode = post\n"
                f"introspection_url = {self.oauth2_introspection_url}\n"
                "username_attribute = username\n"
                "active_attribute = active\n"
                "active_value = true\n"
            )
            oauth2_passdb = (
                "passdb {\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n"
                f"  args = {oauth2_conf}\n}}\n"
            )
            # With each passdb tied to its mechanisms, LMTP's user lookup (no mechanism)
            # would find none; the static userdb then vouches for every user itself, so
            # this instance accepts mail for unknown recipients too.
            userdb_extra = " allow_all_users=yes"
            password_mechanisms = "  mechanisms = plain login\n"
        config = f"""\
# Generated by tests/servers/dovecot.py -- private test instance.
protocols = imap pop3 lmtp
listen = {self.host}
base_dir = {self.run_dir}
state_dir = {self.state_dir}
instance_name = {self.name}
log_path = {self.log_path}
hostname = localhost
postmaster_address = postmaster@{MAIL_DOMAIN}
first_valid_uid = 1
ssl = yes
ssl_cert = <{self._cert.cert_file}
ssl_key = <{self._cert.key_file}
disable_plaintext_auth = no
auth_mechanisms = {mechanisms}
# Log-in names are case-insensitive, as on real servers (passwd.d file names are lower case).
auth_username_format = %Lu
# Users added to the passwd-file must work at once; failed logins must not stall tests.
auth_cache_size = 0
auth_failure_delay = 0
auth_verbose = yes
mail_max_userip_connections = 200
# IDLE/NOTIFY notice changes within a second even where inotify cannot see them, so a
# slow push in a test is ours, not the server's (the default is 30 s).
mailbox_idle_check_interval = 1 secs
mail_fsync = never
# Without its anvil socket, auth applies no per-IP penalty (2 s, 4 s, ... up to 15 s
# after each failed login from 127.0.0.1).
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
{not_root}
passdb {{
{password_mechanisms}  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.passwd_dir}/%u
}}
{oauth2_passdb}userdb {{
  driver = static
  args = uid={uid} gid={gid} home={d}/mail/%d/%n{userdb_extra}
}}
mail_location = maildir:~/Maildir
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Drafts {{
    special_use = \\Drafts
    auto = subscribe
  }}
  mailbox Sent {{
    special_use = \\Sent
    auto = subscribe
  }}
  mailbox Trash {{
    special_use = \\Trash
    auto = subscribe
  }}
  mailbox Junk {{
    special_use = \\Junk
    auto = subscribe
  }}
}}
service imap-login {{
{login_chroot}  inet_listener imap {{
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = {self.imaps_port}
    ssl = yes
  }}
}}
service pop3-login {{
{login_chroot}  inet_listener pop3 {{
    port = {self.pop3_port}
  }}
  inet_listener pop3s {{
    port = {self.pop3s_port}
    ssl = yes
  }}
}}
"""
        self.config_path.write_text(config)

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start (or restart) Dovecot and wait until IMAP, POP3 and LMTP answer."""
        if self.closed:
            raise DovecotError("this Dovecot instance was closed")
        if self.running:
            return
        ensure_dovecot_installed()
        attempts = 1 if self._started_once else 3
        for attempt in range(attempts):
            try:
                self._start_once(timeout)
                self._started_once = True
                return
            except DovecotError as exc:
                self._rt.kill()
                if "in use" not in str(exc) or attempt == attempts - 1:
                    raise
                # A port was grabbed between picking and binding: pick new ones.
                self.imap_port, self.imaps_port, self.pop3_port, self.pop3s_port = free_ports(4)
                self._write_config()

    def _start_once(self, timeout: float) -> None:
        began = time.monotonic()
        cmd = [DOVECOT_BIN, "-F", "-c", str(self.config_path)]
        if threading.current_thread() is threading.main_thread() and shutil.which("setpriv"):
            # If the test process dies hard, the master gets SIGTERM and shuts down.
            cmd = ["setpriv", "--pdeathsig", "TERM", "--", *cmd]
        with open(self.stdout_path, "ab") as out:
            self._rt.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        deadline = began + timeout
        pending = {"imap", "pop3", "lmtp"}
        while pending:
            proc = self._rt.proc
            if proc is None or proc.poll() is not None:
                code = None if proc is None else proc.returncode
                raise DovecotError(
                    f"dovecot exited during start (status {code})\n{self.log_tail()}"
                )
            if "imap" in pending and _greets(self.host, self.imap_port, b"* OK"):
                pending.discard("imap")
            if "pop3" in pending and _greets(self.host, self.pop3_port, b"+OK"):
                pending.discard("pop3")
            if "lmtp" in pending and self.lmtp_socket.exists():
                pending.discard("lmtp")
            if not pending:
                break
            if time.monotonic() > deadline:
                raise DovecotError(
                    f"dovecot not ready after {timeout:.0f}s (waiting for {sorted(pending)})\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.02)
        self.last_start_seconds = time.monotonic() - began

    def stop(self, graceful: bool = False) -> None:
        """Stop Dovecot; mail is kept and :meth:`start` brings it back on the same ports.

        SIGTERM goes to the whole process group (or, if ``graceful``, to the master
        only, which then stops its children: about 1 s); SIGKILL then takes the
        group's stragglers.
        """
        self._rt.kill(graceful=graceful)

    def close(self) -> None:
        """Stop Dovecot and delete its temp dir. Idempotent."""
        self._finalizer()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for path in (self.stdout_path, self.log_path):
            try:
                text = path.read_text(errors="replace")
            except FileNotFoundError:
                continue
            tail = "\n".join(text.splitlines()[-lines:])
            if tail:
                parts.append(f"--- tail of {path} ---\n{tail}")
        return "\n".join(parts) or f"(no dovecot output in {self.base_dir})"

    # ----- users -----------------------------------------------------------

    def add_user(self, email: str, password: str) -> None:
        """Add (or replace) a user; a new user can log in immediately.

        Replacing an existing user's password waits (under ~1 s) for Dovecot's
        once-per-second passwd-file re-check to pick the new password up.
        """
        if not _EMAIL_RE.fullmatch(email):
            raise ValueError(f"unsupported e-mail address for the passwd-file: {email!r}")
        key = email.lower()
        # PLAIN.B64 lets any password (':' included) live in the colon-separated file.
        encoded = base64.b64encode(password.encode()).decode()
        path = self.passwd_dir / key
        with self._users_lock:
            try:
                old_mtime: int | None = int(path.stat().st_mtime)
            except FileNotFoundError:
                old_mtime = None
            changed = old_mtime is not None and self._users.get(key) != password
            self._users[key] = password
            tmp = self.passwd_dir / f".{key}.tmp"
            tmp.write_text(f"{key}:{{PLAIN.B64}}{encoded}::::::\n")
            tmp.chmod(0o644)
            if old_mtime is not None and int(tmp.stat().st_mtime) <= old_mtime:
                # Dovecot reloads a passwd-file only when its mtime (whole seconds) or size
                # changed: make sure a same-second, same-length rewrite is noticed too.
                os.utime(tmp, (old_mtime + 1, old_mtime + 1))
            os.replace(tmp, path)  # atomic: auth never reads a half-written file
            written_at = time.time()
        if changed and self.running:
            # Dovecot stats the file at its first lookup in each new second.
            time.sleep(max(0.0, math.floor(written_at) + 1.02 - time.time()))
            deadline = time.monotonic() + 5
            while not self.authenticate(key, password, service="imap"):
                if time.monotonic() > deadline:
                    raise DovecotError(f"Dovecot did not pick up the new password of {email}")

    def new_user(self, prefix: str = "user") -> MailUser:
        """Create a user with a unique ``@example.test`` address and a random password."""
        email = f"{prefix}-{next(_user_counter)}-{secrets.token_hex(3)}@{MAIL_DOMAIN}"
        user = MailUser(email=email, password=secrets.token_urlsafe(18))
        self.add_user(user.email, user.password)
        return user

    @property
    def users(self) -> dict[str, str]:
        """A copy of the (lower-cased) e-mail -> password map."""
        with self._users_lock:
            return dict(self._users)

    # ----- clients ---------------------------------------------------------

    def client_ssl_context(self) -> ssl.SSLContext:
        """A verifying TLS client context that trusts this instance's certificate."""
        return self._cert.client_context()

    def imap(self, user: MailUser, timeout: float = 30.0) -> imapclient.IMAPClient:
        """A logged-in plain-IMAP client; the caller must ``logout()`` it."""
        client = imapclient.IMAPClient(self.host, port=self.imap_port, ssl=False, timeout=timeout)
        try:
            client.login(user.email, user.password)
        except Exception:
            with contextlib.suppress(Exception):
                client.shutdown()
            raise
        return client

    def imaps(self, user: MailUser, timeout: float = 30.0) -> imapclient.IMAPClient:
        """A logged-in IMAPS client verifying the certificate against ``ca_file``."""
        client = imapclient.IMAPClient(
            self.host,
            port=self.imaps_port,
            ssl=True,
            ssl_context=self.client_ssl_context(),
            timeout=timeout,
        )
        client.login(user.email, user.password)
        return client

    def append(
        self,
        user: MailUser,
        folder: str,
        raw: bytes,
        flags: Iterable[str | bytes] = (),
        when: datetime | None = None,
    ) -> int:
        """APPEND ``raw`` to ``folder`` (created if missing); returns the new UID."""
        client = self.imap(user)
        try:
            if not client.folder_exists(folder):
                client.create_folder(folder)
            response = client.append(folder, raw, flags=tuple(flags), msg_time=when)
        finally:
            with contextlib.suppress(Exception):
                client.logout()
        match = _APPENDUID_RE.search(
            response if isinstance(response, bytes) else str(response).encode()
        )
        if not match:
            raise DovecotError(f"no APPENDUID in APPEND response: {response!r}")
        return int(match.group(2))

    def authenticate(self, email: str, password: str, service: str = "smtp") -> bool:
        """Check credentials with Dovecot's own auth service (its ``auth-client`` socket).

        Returns False for wrong credentials (Dovecot answers failures after its
        fixed ~0.5 s failure-flush tick); raises :class:`DovecotError` when
        Dovecot's auth cannot be reached (e.g. during a simulated outage).
        """
        if any(c in email + password for c in "\0\t\n"):
            return False
        initial = base64.b64encode(b"\0" + email.encode() + b"\0" + password.encode()).decode()
        cpid = secrets.randbelow(2**31 - 2) + 1  # unique per connection
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(10)
                sock.connect(str(self.auth_client_socket))
                stream = sock.makefile("rwb")
                stream.write(f"VERSION\t1\t2\nCPID\t{cpid}\n".encode())
                stream.flush()
                while True:
                    line = stream.readline()
                    if not line:
                        raise DovecotError("auth-client closed the connection during handshake")
                    if line.startswith(b"DONE"):
                        break
                stream.write(f"AUTH\t1\tPLAIN\tservice={service}\tresp={initial}\n".encode())
                stream.flush()
                reply = stream.readline()
        except OSError as exc:
            raise DovecotError(f"Dovecot auth unreachable: {exc}") from exc
        if reply.startswith(b"OK\t"):
            return True
        if reply.startswith(b"FAIL\t"):
            if b"code=temp_fail" in reply:
                raise DovecotError(f"Dovecot auth temporary failure: {reply!r}")
            return False
        raise DovecotError(f"unexpected auth-client reply: {reply!r}")

    def sasl_authenticate(
        self, mechanism: str, initial: bytes, service: str = "smtp"
    ) -> tuple[bool, bytes | None]:
        """Run one SASL exchange (XOAUTH2, OAUTHBEARER, ...) with Dovecot's auth service.

        Returns ``(accepted, error_challenge)``: when Dovecot refuses an OAuth2 token it
        first sends an error challenge (JSON), which is answered here to end the exchange
        and returned. Raises :class:`DovecotError` when auth cannot be reached.
        """
        cpid = secrets.randbelow(2**31 - 2) + 1
        resp = base64.b64encode(initial).decode()
        challenge: bytes | None = None
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(10)
                sock.connect(str(self.auth_client_socket))
                stream = sock.makefile("rwb")
                stream.write(f"VERSION\t1\t2\nCPID\t{cpid}\n".encode())
                stream.flush()
                while not stream.readline().startswith(b"DONE"):
                    pass
                stream.write(f"AUTH\t1\t{mechanism}\tservice={service}\tresp={resp}\n".encode())
                stream.flush()
                reply = stream.readline()
                if reply.startswith(b"CONT\t"):
                    challenge = base64.b64decode(reply.split(b"\t")[2].strip())
                    end = "AQ==" if mechanism.upper() == "OAUTHBEARER" else ""
                    stream.write(f"CONT\t1\t{end}\n".encode())
                    stream.flush()
                    reply = stream.readline()
        except OSError as exc:
            raise DovecotError(f"Dovecot auth unreachable: {exc}") from exc
        if reply.startswith(b"OK\t"):
            return True, None
        if reply.startswith(b"FAIL\t"):
            if b"code=temp_fail" in reply:
                raise DovecotError(f"Dovecot auth temporary failure: {reply!r}")
            return False, challenge
        raise DovecotError(f"unexpected auth-client reply: {reply!r}")

    def check_recipient(self, address: str, timeout: float = 30.0) -> tuple[int, str]:
        """Ask Dovecot's LMTP whether it would accept ``address``: ``(code, text)``."""
        with smtplib.LMTP(str(self.lmtp_socket), timeout=timeout) as lmtp:
            lmtp.mail("")
            code, text = lmtp.rcpt(address)
            lmtp.rset()
        return code, text.decode(errors="replace")

    def deliver(self, rcpt: str, raw: bytes, mail_from: str = "", timeout: float = 60.0) -> None:
        """Deliver ``raw`` to ``rcpt`` over LMTP (adds Return-Path/Delivered-To/Received).

        One recipient per LMTP transaction (smtplib desyncs with several).  Raises
        ``smtplib.SMTPRecipientsRefused`` / ``SMTPDataError`` / ``SMTPSenderRefused``
        with Dovecot's reply, or ``OSError`` if LMTP is down.
        """
        with smtplib.LMTP(str(self.lmtp_socket), timeout=timeout) as lmtp:
            lmtp.ehlo()
            options: list[str] = []
            if lmtp.has_extn("8bitmime") and any(b > 127 for b in raw):
                options.append("BODY=8BITMIME")
            lmtp.sendmail(mail_from, [rcpt], raw, mail_options=options)

    def doveadm(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``doveadm -c CONFIG ARGS...``; returns stdout, raises on failure."""
        proc = subprocess.run(
            [DOVEADM_BIN, "-c", str(self.config_path), *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise DovecotError(
                f"doveadm {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}"
            )
        return proc.stdout

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("running" if self.running else "stopped")
        return (
            f"<Dovecot {state} imap={self.imap_port} imaps={self.imaps_port} "
            f"pop3={self.pop3_port} pop3s={self.pop3s_port} dir={self.base_dir}>"
        )


def _group_alive(pgid: int) -> bool:
    """Whether a non-zombie process of process group ``pgid`` still exists."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may contain spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


def _wait_group_gone(pgid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.01)


def _greets(host: str, port: int, prefix: bytes) -> bool:
    try:
        return _read_greeting(host, port).startswith(prefix)
    except OSError:
        return False


def _lookup(kind: str, name: str) -> int:
    if kind == "passwd":
        import pwd

        return pwd.getpwnam(name).pw_uid
    import grp

    return grp.getgrnam(name).gr_gid
