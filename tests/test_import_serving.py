"""What the server does with a GUN imported from another notary server, before its owner rotates
the timestamp key: the imported timestamp is served unchanged, even about to expire (the server
never signs with a key the root does not list), and publishes are refused naming the rotation.
"""

from __future__ import annotations

from pathlib import Path

from support.api import Server, error_of
from support.repo import RepoBuilder, expires_in, signed_bytes
from tufnotary.metadata.model import SNAPSHOT, TARGETS, Envelope, FileMeta, Timestamp
from tufnotary.metadata.signing import PrivateKey
from tufnotary.server.storage import Stores
from tufnotary.server.storage.metadata import NewFile
from tufnotary.server.updates import no_timestamp_key

GUN = "example.com/imported/app"


def test_imported_timestamp_is_served_unchanged_and_publishes_name_the_rotation(
    tmp_path: Path,
) -> None:
    server = Server.start(tmp_path)
    source_key = PrivateKey.generate()  # the source's timestamp key: not held here
    repo = RepoBuilder(GUN, source_key.public)
    files = repo.first_publish()
    expiring = Timestamp(1, expires_in(1 / 24 / 60), {SNAPSHOT: FileMeta.of(files[SNAPSHOT])})
    files["timestamp"] = signed_bytes(expiring, (source_key, None))
    stores = Stores.from_url(server.settings.effective_database_url)
    try:
        new = [
            NewFile(role, Envelope.from_bytes(data).version, data) for role, data in files.items()
        ]
        stores.metadata.add_versions(GUN, new)
        server.server_key(GUN, "timestamp")  # a key of the server's own, not listed by root

        for _ in range(2):  # within the re-sign margin: a held key would re-sign now
            response = server.get(GUN, "timestamp.json")
            assert response.status_code == 200
            assert response.data == files["timestamp"]
        assert stores.metadata.latest(GUN, "timestamp").version == 1  # type: ignore[union-attr]

        repo.add_target("v1", b"v1")
        refused = server.upload(
            GUN, {TARGETS: repo.targets_bytes(), SNAPSHOT: repo.snapshot_bytes()}
        )
        assert refused.status_code == 400
        assert error_of(refused)["detail"]["Error"]["Msg"] == no_timestamp_key(GUN)
        assert stores.metadata.latest(GUN, TARGETS).version == 2  # type: ignore[union-attr]
    finally:
        stores.engine.dispose()
