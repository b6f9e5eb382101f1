"""An S3-compatible server for tests: moto's server mode, in-process, on loopback.

No MinIO binary can be installed here; the ``minio`` client talks to moto as it
would to MinIO.  moto checks neither signatures nor presigned-URL expiry: assert
on the URL's ``X-Amz-*`` parameters for those.
"""

from __future__ import annotations

import itertools
import secrets
import threading
from typing import Self

from minio import Minio
from minio.deleteobjects import DeleteObject
from moto.server import ThreadedMotoServer

_bucket_counter = itertools.count(1)


class S3Server:
    """A private moto S3 server; not started until :meth:`start`."""

    host = "127.0.0.1"
    region = "us-east-1"

    def __init__(
        self, access_key: str = "test-access-key", secret_key: str = "test-secret-key"
    ) -> None:
        self.access_key = access_key
        self.secret_key = secret_key
        self.port: int | None = None
        self._server: ThreadedMotoServer | None = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def endpoint(self) -> str:
        """``host:port``, as the ``minio`` client wants it."""
        if self.port is None:
            raise RuntimeError("S3Server not started")
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def start(self) -> None:
        with self._lock:
            if self._server is not None:
                return
            # Port 0 on the first start: the kernel picks a free port, no race.
            # ThreadedMotoServer.start() would wait forever if binding failed.
            server = ThreadedMotoServer(ip_address=self.host, port=self.port or 0, verbose=False)
            server.start()
            self.port = server.get_host_and_port()[1]
            self._server = server

    def stop(self) -> None:
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            server.stop()

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(self) -> Minio:
        """A ``minio`` client for this server (region set: presigning needs no network call)."""
        return Minio(
            self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=False,
            region=self.region,
        )

    def new_bucket(self, prefix: str = "test") -> str:
        """Create a uniquely named bucket; returns its name."""
        name = f"{prefix}-{next(_bucket_counter)}-{secrets.token_hex(4)}".lower()[:63]
        self.client().make_bucket(name)
        return name

    def delete_bucket(self, name: str) -> None:
        """Delete a bucket and everything in it (missing buckets are ignored)."""
        client = self.client()
        if not client.bucket_exists(name):
            return
        objects = [
            DeleteObject(o.object_name, o.version_id)
            for o in client.list_objects(name, recursive=True, include_version=True)
            if o.object_name is not None
        ]
        for error in client.remove_objects(name, objects):
            raise RuntimeError(f"could not delete {error.name} from {name}: {error}")
        client.remove_bucket(name)

    def __repr__(self) -> str:
        state = f"running {self.url}" if self.running else "stopped"
        return f"<S3Server {state}>"
