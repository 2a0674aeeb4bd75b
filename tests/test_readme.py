"""README.md's examples run as written, taken from README.md itself so they cannot drift.

Blocks fenced as ```sh run in order, each in a fresh `bash -euo pipefail` without a terminal;
then the ```python blocks run. A block right after the line
`<!-- not run by tests/test_readme.py: REASON -->` is left out (the server's own start, which
the test does itself; `docker compose up`, which needs a Docker engine; the test suite itself).

They run in a temporary folder that is also the server's working folder, so `data/tls/ca.crt`
is its generated CA, with HOME inside it (so ~/.notary, ~/.docker and ~/.tufnotary start
empty) and the project's virtualenv on PATH. The server listens on a free port: every
`127.0.0.1:4443` in a block becomes `127.0.0.1:<port>`. `docker trust` needs no daemon;
DOCKER_HOST points at a missing socket so that none is ever reached.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from support.clients import DOCKER_HINT, NOTARY_HINT, require_cli
from support.server import running_server

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DEFAULT_ADDRESS = "127.0.0.1:4443"
_FENCE = re.compile(r"^```(?P<lang>\w*)\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL)
_NOT_RUN = re.compile(r"<!-- not run by tests/test_readme\.py: (?P<reason>\S.*?) -->\s*\Z")
RUN_LANGUAGES = ("sh", "python")


@dataclass(frozen=True)
class Block:
    """One fenced code block of README.md."""

    language: str
    code: str
    line: int  # of its opening fence
    skip_reason: str | None

    def describe(self) -> str:
        return f"README.md line {self.line} ({self.language} block):\n{self.code}"


def readme_blocks() -> list[Block]:
    """Every fenced block of README.md, in order, with the reason it is not run (if marked)."""
    text = README.read_text()
    blocks = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()]
        marker = _NOT_RUN.search(before.rstrip("\n").rsplit("\n", 1)[-1])
        blocks.append(
            Block(
                match["lang"],
                match["body"],
                before.count("\n") + 1,
                marker["reason"] if marker else None,
            )
        )
    return blocks


def runnable(language: str) -> list[Block]:
    return [b for b in readme_blocks() if b.language == language and b.skip_reason is None]


def test_markers_only_precede_runnable_blocks() -> None:
    """A marker before a block that would not run anyway is a mistake (e.g. a typo'd fence)."""
    misplaced = [b for b in readme_blocks() if b.skip_reason and b.language not in RUN_LANGUAGES]
    assert not misplaced, "\n".join(b.describe() for b in misplaced)
    markers = re.findall(r"^<!-- not run by tests/test_readme\.py:", README.read_text(), re.M)
    assert len(markers) == sum(1 for b in readme_blocks() if b.skip_reason), (
        "a not-run marker is not on the line right before a block's fence"
    )


def test_the_examples_are_run() -> None:
    """The walkthroughs stay under test: none of them is marked as not run."""
    shell = "\n".join(b.code for b in runnable("sh"))
    for command in ("notary -s", "docker trust signer add", "tufnotary verify-image"):
        assert command in shell, f"no runnable README block uses {command!r}"
    assert runnable("python"), "the Python example is not run"


def block_environment(folder: Path) -> dict[str, str]:
    """A clean environment: no NOTARY_/DOCKER_/TUFNOTARY_ settings, HOME in `folder`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NOTARY_", "DOCKER_", "TUFNOTARY_", "XDG_")) and k != "HOME"
    }
    home = folder / "home"
    home.mkdir()
    return env | {
        "HOME": str(home),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
        "DOCKER_HOST": f"unix://{folder / 'no-daemon.sock'}",
        "DOCKER_CLI_HINTS": "false",
    }


def run_block(
    command: list[str], block: Block, address: str, folder: Path, env: dict[str, str]
) -> str:
    """Run one block with the server's address substituted; its output, or fail with it."""
    code = block.code.replace(DEFAULT_ADDRESS, address)
    result = subprocess.run(
        [*command, code],
        cwd=folder,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, (
        f"{block.describe()}\nexited {result.returncode}:\n{result.stdout}{result.stderr}"
    )
    return result.stdout


def test_readme_examples_run(tmp_path: Path) -> None:
    require_cli("notary", NOTARY_HINT)
    require_cli("docker", DOCKER_HINT)
    env = block_environment(tmp_path)
    with running_server(tmp_path) as server:
        assert server.ca_cert == tmp_path / "data" / "tls" / "ca.crt"
        address = server.url.removeprefix("https://")
        for block in runnable("sh"):
            run_block(["bash", "-euo", "pipefail", "-c"], block, address, tmp_path, env)
        printed = [
            run_block([sys.executable, "-c"], block, address, tmp_path, env)
            for block in runnable("python")
        ]
    # the Python example prints the digest the shell walkthrough signed
    digest = hashlib.sha256((tmp_path / "manifest.json").read_bytes()).hexdigest()
    assert printed[-1].split() == [f"sha256:{digest}"]
