"""Drive the server app in-process: uploads as the Go client sends them, ready repositories."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from werkzeug.serving import make_server
from werkzeug.test import TestResponse

from support.repo import RepoBuilder
from tufnotary.metadata.keys import Key
from tufnotary.server.app import create_app
from tufnotary.server.config import Settings
from tufnotary.server.migrate import upgrade


def multipart(parts: Iterable[tuple[str, bytes]], boundary: str | None = None) -> tuple[bytes, str]:
    """A body like the Go client's: one part per (filename, bytes), 60-hex boundary."""
    boundary = boundary or secrets.token_hex(30)
    body = b"".join(
        b"--" + boundary.encode() + b"\r\n"
        b'Content-Disposition: form-data; name="files"; filename="' + name.encode() + b'"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n"
        for name, data in parts
    )
    body += b"--" + boundary.encode() + b"--\r\n"
    return body, f"multipart/form-data; boundary={boundary}"


@dataclass
class Server:
    """An app on a migrated database and a test client for it."""

    app: Flask
    client: FlaskClient
    settings: Settings
    repos: dict[str, RepoBuilder] = field(default_factory=dict)

    @classmethod
    def start(cls, data_dir: Path, database_url: str | None = None, **settings: Any) -> Server:
        data_dir.mkdir(parents=True, exist_ok=True)
        config = Settings(
            data_dir=data_dir,
            database_url=database_url,
            key_passphrase="test passphrase",
            log_level="error",
            **settings,
        )
        upgrade(config.effective_database_url)
        app = create_app(config)
        return cls(app, app.test_client(), config)

    def tuf(self, gun: str, name: str = "") -> str:
        return f"/v2/{gun}/_trust/tuf/{name}"

    def upload(
        self, gun: str, files: dict[str, bytes] | Iterable[tuple[str, bytes]]
    ) -> TestResponse:
        items = files.items() if isinstance(files, dict) else files
        body, content_type = multipart(items)
        return self.client.post(self.tuf(gun), data=body, content_type=content_type)

    def get(self, gun: str, name: str) -> TestResponse:
        return self.client.get(self.tuf(gun, name))

    def server_key(self, gun: str, role: str, method: str = "GET") -> Key:
        response = self.client.open(self.tuf(gun, f"{role}.key"), method=method)
        assert response.status_code == 200, response.data
        return Key.from_dict(json.loads(response.data))

    def new_repo(self, gun: str, *, server_snapshot: bool = False) -> RepoBuilder:
        """A published repository (first publish as notary init -p or docker would do)."""
        snapshot_key = self.server_key(gun, "snapshot") if server_snapshot else None
        repo = RepoBuilder(gun, self.server_key(gun, "timestamp"), snapshot_key)
        response = self.upload(gun, repo.first_publish())
        assert response.status_code == 200, response.data
        self.repos[gun] = repo
        return repo


def error_of(response: TestResponse) -> dict[str, Any]:
    """The single error of an error envelope."""
    assert response.content_type == "application/json; charset=utf-8"
    assert response.data.endswith(b"\n")
    errors = json.loads(response.data)["errors"]
    assert len(errors) == 1
    return errors[0]  # type: ignore[no-any-return]


@contextmanager
def serving(app: Flask) -> Iterator[str]:
    """``app`` over plain HTTP on a free loopback port, in a thread; yields its URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()
