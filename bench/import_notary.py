"""Time `tufnotary-server import --from-notary` of one large repository from the reference.

The reference notary-server (memory store, local signer) gets a repository published through
its API the way the Go client publishes: ``--versions`` uploads (default 100) of
``--tags / --versions`` new docker-style tags each (sha256 only; 10,000 tags in the end), the
client holding the snapshot key; every ``--root-every``-th upload (default 10) also carries a
new root version, so the import walks a chain of root versions. Then ``tufnotary-server
import`` runs as an operator runs it (a new process, into a fresh SQLite database) and is
timed twice: the first import, and a re-run that finds nothing new.

    .venv/bin/python bench/import_notary.py [--tags 10000] [--versions 100] [--root-every 10]
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))

from support.api import multipart  # noqa: E402
from support.reference import launched_reference, require_reference_binary  # noqa: E402
from support.repo import RepoBuilder  # noqa: E402
from support.server import server_environment  # noqa: E402
from tufnotary.client.remote import Remote  # noqa: E402
from tufnotary.importer.notary_api import import_gun  # noqa: E402
from tufnotary.metadata.keys import Key  # noqa: E402
from tufnotary.metadata.model import ROOT, SNAPSHOT, TARGETS, FileMeta  # noqa: E402
from tufnotary.server.migrate import upgrade  # noqa: E402
from tufnotary.server.storage import Stores  # noqa: E402
from tufnotary.server.tls import ensure_self_signed  # noqa: E402

GUN = "bench.example.com/import/large"


def publish(url: str, ca: Path, files: dict[str, bytes]) -> None:
    body, content_type = multipart((f"{role}.json", data) for role, data in files.items())
    response = requests.post(
        f"{url}/v2/{GUN}/_trust/tuf/",
        data=body,
        headers={"Content-Type": content_type},
        verify=str(ca),
        timeout=60,
    )
    response.raise_for_status()


def populate(url: str, ca: Path, tags: int, versions: int, root_every: int) -> int:
    """Publish the repository; returns the number of root versions."""
    key = requests.get(f"{url}/v2/{GUN}/_trust/tuf/timestamp.key", verify=str(ca), timeout=30)
    key.raise_for_status()
    repo = RepoBuilder(GUN, Key.from_dict(key.json()))
    per_version = tags // versions
    for version in range(versions):
        for number in range(version * per_version, (version + 1) * per_version):
            digest = hashlib.sha256(f"manifest {number}".encode()).digest()
            repo.targets[TARGETS].targets[f"tag-{number}"] = FileMeta(1234, {"sha256": digest})
        if version == 0:
            files = repo.first_publish()
        else:
            files = {}
            if version % root_every == 0:
                repo.root.version += 1
                files[ROOT] = repo.root_bytes()
            files[TARGETS] = repo.targets_bytes()
            files[SNAPSHOT] = repo.snapshot_bytes()
        publish(url, ca, files)
    return repo.root.version


def timed_import(source: str, ca: Path, data_dir: Path) -> tuple[float, str]:
    command = [sys.executable, "-m", "tufnotary.server.cli", "import", "--data-dir", str(data_dir)]
    command += ["--from-notary", source, "--tlscacert", str(ca), GUN]
    start = time.perf_counter()
    result = subprocess.run(
        command, env=server_environment({}), capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"import failed:\n{result.stdout}{result.stderr}")
    return elapsed, result.stdout.splitlines()[0]


def in_process_import(source: str, ca: Path, database: Path) -> float:
    """Seconds of ``import_gun`` alone (no process start), into a fresh SQLite database."""
    url = f"sqlite:///{database}"
    upgrade(url)
    stores = Stores.from_url(url)
    try:
        start = time.perf_counter()
        import_gun(stores.metadata, Remote(source, verify=str(ca)), GUN)
        return time.perf_counter() - start
    finally:
        stores.engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tags", type=int, default=10_000)
    parser.add_argument("--versions", type=int, default=100)
    parser.add_argument("--root-every", type=int, default=10)
    args = parser.parse_args()
    require_reference_binary()
    with tempfile.TemporaryDirectory(prefix="bench-import-") as temp:
        base = Path(temp)
        tls = ensure_self_signed(base)
        with launched_reference(base / "reference", tls, log_level="error") as source:
            start = time.perf_counter()
            roots = populate(source.url, tls.ca_cert, args.tags, args.versions, args.root_every)
            print(
                f"published {args.versions} versions, {args.tags} tags, {roots} root versions "
                f"to the reference in {time.perf_counter() - start:.1f} s"
            )
            size = len(
                requests.get(
                    f"{source.url}/v2/{GUN}/_trust/tuf/targets.json",
                    verify=str(tls.ca_cert),
                    timeout=60,
                ).content
            )
            print(f"targets.json: {size:,} bytes")
            migrate = [sys.executable, "-m", "tufnotary.server.cli", "migrate"]
            migrate += ["--data-dir", str(base / "ours")]
            subprocess.run(migrate, env=server_environment({}), check=True, capture_output=True)
            for run in ("first import", "re-run (nothing new)"):
                elapsed, summary = timed_import(source.url, tls.ca_cert, base / "ours")
                print(f"{run}: {elapsed:.2f} s  ({summary[:100]}...)")
            elapsed = in_process_import(source.url, tls.ca_cert, base / "in-process.db")
            print(f"first import in process (no process start): {elapsed:.2f} s")


if __name__ == "__main__":
    main()
