"""A real local sessync cluster for the tests: `sessync node` processes sharing a secret.

Each node binds 127.0.0.1:0 for both ports and prints ``ready client=ADDR peer=ADDR``; the
cluster reads that line (bounded wait) and stops every node at teardown (SIGTERM, then
SIGKILL after a bounded wait).
"""

import os
import secrets
import selectors
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import List, Optional

REPO = Path(__file__).resolve().parents[3]
READY_TIMEOUT = 15.0


def sessync_binary() -> str:
    """``$SESSYNC_BIN``, else ``target/debug/sessync`` of this repository."""
    explicit = os.environ.get("SESSYNC_BIN")
    if explicit:
        return explicit
    path = REPO / "target" / "debug" / "sessync"
    if not path.exists():
        raise RuntimeError(f"{path} is missing: run `cargo build --bin sessync` (or set SESSYNC_BIN)")
    return str(path)


class Node:
    def __init__(self, proc: "subprocess.Popen[bytes]", client: str, peer: str) -> None:
        self.proc = proc
        self.client = client
        self.peer = peer

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc.stdout:
            self.proc.stdout.close()


class Cluster:
    """``n`` nodes that share one secret file."""

    def __init__(self, n: int, extra_args: Optional[List[str]] = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="sessync-py-")
        self.secret_file = os.path.join(self.dir, "secret")
        with open(self.secret_file, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        self.nodes: List[Node] = []
        try:
            for _ in range(n):
                self.nodes.append(self._spawn(extra_args or []))
        except BaseException:
            self.stop()
            raise

    def _spawn(self, extra: List[str]) -> Node:
        cmd = [
            sessync_binary(),
            "node",
            "--client",
            "127.0.0.1:0",
            "--peer",
            "127.0.0.1:0",
            "--secret-file",
            self.secret_file,
            *extra,
        ]
        env = dict(os.environ, SESSYNC_LOG=os.environ.get("SESSYNC_LOG", "warn"))
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=None, env=env)
        assert proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + READY_TIMEOUT
        line = b""
        try:
            while not line.endswith(b"\n"):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not sel.select(timeout=remaining):
                    raise RuntimeError(f"node did not print its ready line within {READY_TIMEOUT}s: {line!r}")
                chunk = os.read(proc.stdout.fileno(), 1)
                if not chunk:
                    raise RuntimeError(f"node exited before it was ready (status {proc.wait(timeout=5)})")
                line += chunk
        except BaseException:
            proc.kill()
            proc.wait(timeout=5)
            raise
        finally:
            sel.close()
        fields = dict(part.split("=", 1) for part in line.decode().split()[1:])
        if not line.startswith(b"ready ") or "client" not in fields or "peer" not in fields:
            proc.kill()
            raise RuntimeError(f"unexpected ready line {line!r}")
        return Node(proc, fields["client"], fields["peer"])

    @property
    def clients(self) -> List[str]:
        return [n.client for n in self.nodes]

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
