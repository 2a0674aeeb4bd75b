"""Hostile upload bodies (issue 9) and the server's CPU time and memory read from /proc."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

import requests

from support.api import multipart
from support.repo import RepoBuilder
from support.server import ServerInfo
from tufnotary.metadata.canonical import encode_wire
from tufnotary.metadata.keys import Key
from tufnotary.metadata.model import TARGETS, FileMeta

UPLOAD_TIMEOUT = 600
_SIGNATURE_BYTES = 150  # one {"keyid":...,"method":"ecdsa","sig":...} entry, roughly


def signature_flood(repo: RepoBuilder, size: int) -> bytes:
    """A targets document of about ``size`` bytes: half of it signed targets, half bogus
    signatures that all name the real targets key (the worst split for re-hashing)."""
    targets = repo.targets[TARGETS]
    targets.version += 1
    index = 0
    while len(encode_wire(targets.to_dict(), [])) < size // 2:
        for _ in range(1000):
            targets.targets[f"flood-{index:07d}"] = FileMeta.of(str(index).encode())
            index += 1
    keyid = repo.targets_key.public.key_id
    bogus = {"keyid": keyid, "method": "ecdsa", "sig": base64.b64encode(bytes(64)).decode()}
    count = max(1, (size - size // 2) // _SIGNATURE_BYTES)
    return encode_wire(targets.to_dict(), [bogus] * count)


def array_bomb(size: int) -> bytes:
    """``[[],[],...]`` of about ``size`` bytes: the densest JSON in Python objects."""
    return b"[" + b"[]," * (size // 3) + b"[]]"


def https_session(info: ServerInfo) -> requests.Session:
    """A session that trusts exactly the server's CA."""
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE would override the CA
    session.verify = str(info.ca_cert)
    return session


@dataclass
class LiveRepo:
    """A repository published to a running server, and uploads to it over HTTPS."""

    info: ServerInfo
    tuf: str
    repo: RepoBuilder

    @classmethod
    def publish(cls, info: ServerInfo, gun: str) -> LiveRepo:
        """``gun`` as ``notary init -p`` publishes it (client-held snapshot key)."""
        tuf = f"{info.url}/v2/{gun}/_trust/tuf/"
        response = https_session(info).get(tuf + "timestamp.key", timeout=30)
        live = cls(info, tuf, RepoBuilder(gun, Key.from_dict(response.json())))
        response = live.upload(live.repo.first_publish())
        assert response.status_code == 200, response.text
        return live

    def session(self) -> requests.Session:
        return https_session(self.info)

    def upload(self, files: dict[str, bytes]) -> requests.Response:
        body, content_type = multipart(files.items())
        headers = {"Content-Type": content_type}
        return self.session().post(self.tuf, data=body, headers=headers, timeout=UPLOAD_TIMEOUT)

    def post(self, role: str, data: bytes) -> str:
        """Upload one part; the answer as ``STATUS CODE`` (or the connection error)."""
        try:
            response = self.upload({role: data})
        except requests.ConnectionError as exc:
            return f"connection error ({type(exc).__name__})"
        if response.status_code == 200:
            return "200"
        return f"{response.status_code} {response.json()['errors'][0]['code']}"


@dataclass(frozen=True)
class ProcessUsage:
    """CPU seconds (user + system) and peak resident memory (VmHWM, MiB) of one process."""

    cpu_seconds: float
    peak_rss_mib: float


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (gunicorn's workers of the master ``pid``)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text()
        found.extend(int(child) for child in text.split())
    return found


def usage(pid: int) -> ProcessUsage:
    """CPU time and peak RSS of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return ProcessUsage(ticks / os.sysconf("SC_CLK_TCK"), int(line.split()[1]) / 1024)


def workers_usage(master: int) -> dict[int, ProcessUsage]:
    """Usage of each worker process of the server whose master process is ``master``."""
    return {pid: usage(pid) for pid in children(master)}


def cpu_spent(before: dict[int, ProcessUsage], after: dict[int, ProcessUsage]) -> float:
    """CPU seconds the workers used between two readings."""
    return sum(
        after[pid].cpu_seconds - (before[pid].cpu_seconds if pid in before else 0.0)
        for pid in after
    )
