"""The verifier's answer, and the on-disk store that lets `tmebox verify` skip known images.

A verdict read from disk is untrusted input: any process that can write the cache directory
could plant "ok" for an image that escapes. Each stored verdict therefore carries an HMAC-SHA256
under a per-user key (32 random bytes, created 0600 beside the store); an entry whose tag does
not match, or a key or directory that others can write, is ignored and the image verified
again. The key only stops writers who cannot read it — processes of the same user can do both,
and they could as well ptrace the host (docs/verifier.md, "Threat model").
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
import stat
from pathlib import Path

from tmebox.trusted import cache
from tmebox.trusted.record import Record, as_dict

__all__ = ["Store", "Verdict", "remember", "stored"]


class Verdict(Record, frozen=True):
    name: str
    ok: bool
    isolation: str
    instructions: int
    code_bytes: int
    address: int | None = None
    bytes: bytes = b""
    disassembly: str = ""
    rule: str = ""
    reason: str = ""
    level: str = "x86-64"  # the CPU level verified against (trusted.image.CpuLevel)

    def summary(self) -> str:
        if self.ok:
            level = "" if self.level == "x86-64" else f"{self.level}, "
            return (f"{self.name}: ok ({self.isolation}, {level}{self.instructions:,} "
                    f"instructions, {self.code_bytes:,} bytes)")
        where = f" at {self.address:#x}" if self.address is not None else ""
        text = f": {self.bytes.hex(' ')}  {self.disassembly}" if self.bytes else ""
        return f"{self.name}: REJECTED{where}{text} — rule {self.rule}: {self.reason}"

    def to_json(self) -> str:
        d = as_dict(self)
        d["bytes"] = self.bytes.hex()
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Verdict:
        d = json.loads(text)
        d["bytes"] = bytes.fromhex(d["bytes"])
        return cls(**d)


def _private(st: os.stat_result) -> bool:
    """Owned by us and writable by nobody else."""
    return st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


class Store:
    """Verdicts by key (image hash + verifier hash), each authenticated with the user's key."""

    KEY_FILE = "verdict.key"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _secret(self, create: bool) -> bytes | None:
        path = self.directory / self.KEY_FILE
        try:
            if create:
                self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                except FileExistsError:
                    pass
                else:
                    with os.fdopen(fd, "wb") as f:
                        f.write(os.urandom(32))  # what secrets.token_bytes is
            if not _private(os.stat(self.directory)):
                return None
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(f.fileno())
                if not _private(st) or st.st_mode & (stat.S_IRGRP | stat.S_IROTH):
                    return None
                secret = f.read()
        except OSError:
            return None
        return secret if len(secret) == 32 else None

    @staticmethod
    def _tag(secret: bytes, key: str, body: str) -> str:
        return hmac.new(secret, f"{key}\n{body}".encode(), "sha256").hexdigest()

    def get(self, key: str) -> Verdict | None:
        secret = self._secret(create=False)
        if secret is None:
            return None
        try:
            tag, _, body = (self.directory / key).read_text().partition("\n")
            if not hmac.compare_digest(tag, self._tag(secret, key, body)):
                return None
            return Verdict.from_json(body)
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def put(self, key: str, verdict: Verdict) -> None:
        secret = self._secret(create=True)
        if secret is None:
            return  # an unusable store only costs a re-verification
        body = verdict.to_json()
        tmp = self.directory / f".{key}.{os.getpid()}"
        try:
            tmp.write_text(f"{self._tag(secret, key, body)}\n{body}")
            tmp.replace(self.directory / key)
        except OSError:
            tmp.unlink(missing_ok=True)


_VERDICTS: dict[str, Verdict] = {}


@functools.cache
def _verifier_hash() -> str:
    """Hash of the code that decides verdicts: this folder's files, and where the two
    decoders are installed with their size and time (a reinstall or upgrade changes them),
    found without importing the decoders, so that a known image's verdict costs no decoder."""
    from importlib.util import find_spec

    decoders = []
    for name in ("iced_x86", "capstone"):
        spec = find_spec(name)
        origin = spec.origin if spec is not None else None
        st = os.stat(origin) if origin else None
        decoders.append(f"{name} {origin} {st and (st.st_size, st.st_mtime_ns)}")
    return cache.fingerprint(sorted(Path(__file__).parent.glob("*.py")), *decoders, length=64)


def _key(image_sha256: str) -> str:
    return hashlib.sha256(f"{image_sha256} {_verifier_hash()}".encode()).hexdigest()


def stored(image_sha256: str) -> Verdict | None:
    """The verdict this verifier gave an image of that content, if one is kept (in this
    process, or authenticated on disk), else None."""
    key = _key(image_sha256)
    verdict = _VERDICTS.get(key) or Store(cache.root() / "verdicts").get(key)
    if verdict is not None:
        _VERDICTS[key] = verdict
    return verdict


def remember(image_sha256: str, verdict: Verdict) -> None:
    """Keep the verdict for images of that content (in this process, and on disk)."""
    key = _key(image_sha256)
    _VERDICTS[key] = verdict
    Store(cache.root() / "verdicts").put(key, verdict)
