"""API keys and tenants of ``editwrap serve``.

A key file (``--keys keys.json`` or ``EDITWRAP_KEYS``, either a path or the JSON itself) lists
keys, each with a name, its scopes and the edit sets it may read and write::

    {"keys": [
      {"name": "ops", "key": "…", "scopes": ["admin"]},
      {"name": "tenant-a", "sha256": "<hex digest of the key>", "scopes": ["generate", "edit"], "sets": ["tenant-a"]}
    ]}

* ``generate``: completions and chat; ``edit``: list, push, pop and remove edits of the key's
  sets; ``admin``: everything, every set, untagged edits (they apply to every tenant) and saves.
* ``sets``: set names, or ``["*"]`` for every set. A key sees untagged edits plus its sets' edits.
* A key is given in clear (``key``) or as the SHA-256 hex digest of it (``sha256``), so the file
  need not hold the secret. Presented keys are hashed and compared with every stored digest by
  :func:`hmac.compare_digest` (no early exit: the time does not depend on which key matched or
  how much of it), and they are never logged or echoed.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = ["Principal", "KeyRing", "LOCAL", "load_keys", "SCOPES"]

SCOPES = ("generate", "edit", "admin")
Scope = Literal["generate", "edit", "admin"]
MIN_KEY_CHARS = 16


class KeySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    key: str | None = None
    sha256: str | None = None
    scopes: list[Scope] = Field(min_length=1)
    sets: list[str] = Field(default_factory=list)

    @field_validator("key")
    @classmethod
    def _long_enough(cls, v: str | None) -> str | None:
        if v is not None and len(v) < MIN_KEY_CHARS:
            raise ValueError(f"a key needs at least {MIN_KEY_CHARS} characters; make one with "
                             "python -c 'import secrets; print(secrets.token_urlsafe(32))'")
        return v

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, v: str | None) -> str | None:
        if v is not None and (len(v) != 64 or any(c not in "0123456789abcdef" for c in v.lower())):
            raise ValueError("sha256 must be the 64-character hex digest of the key "
                             "(python -c 'import hashlib,sys; "
                             "print(hashlib.sha256(sys.argv[1].encode()).hexdigest())' KEY)")
        return v.lower() if v else v

    @model_validator(mode="after")
    def _one_secret(self) -> "KeySpec":
        if (self.key is None) == (self.sha256 is None):
            raise ValueError(f"key {self.name!r}: give exactly one of 'key' or 'sha256'")
        return self


class KeyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[KeySpec] = Field(min_length=1)


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: the key's name, scopes and sets (``None``: every set)."""

    name: str
    scopes: frozenset[str]
    sets: frozenset[str] | None

    @property
    def admin(self) -> bool:
        return "admin" in self.scopes

    def has(self, scope: str) -> bool:
        return self.admin or scope in self.scopes

    def may_use(self, edit_set: str | None) -> bool:
        """Whether this key may read and write ``edit_set`` (``None``: untagged edits, admin only to write)."""
        if edit_set is None:
            return self.admin
        return self.sets is None or edit_set in self.sets

    def sees(self, edit_set: str | None) -> bool:
        """Whether an edit of ``edit_set`` is visible to this key (untagged edits are visible to all)."""
        return edit_set is None or self.sets is None or edit_set in self.sets


#: the principal of a server without a key file (localhost only): every scope and set
LOCAL = Principal("local", frozenset(SCOPES), None)


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


class KeyRing:
    """The keys of a key file, for constant-time lookup of a presented key."""

    def __init__(self, spec: KeyFile) -> None:
        names = [k.name for k in spec.keys]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"keys: names must be unique; repeated: {dup}")
        self._entries: list[tuple[bytes, Principal]] = []
        for k in spec.keys:
            digest = _digest(k.key) if k.key is not None else bytes.fromhex(k.sha256 or "")
            sets = None if "admin" in k.scopes or "*" in k.sets else frozenset(k.sets)
            self._entries.append((digest, Principal(k.name, frozenset(k.scopes), sets)))
        digests = [d for d, _ in self._entries]
        if len(set(digests)) < len(digests):
            raise ValueError("keys: two entries hold the same key; give every name its own key")

    def __len__(self) -> int:
        return len(self._entries)

    def authenticate(self, presented: str) -> Principal | None:
        """The principal whose key is ``presented``, or None; every stored key is compared."""
        d = _digest(presented)
        found = None
        for digest, who in self._entries:
            if hmac.compare_digest(d, digest):
                found = who
        return found


def load_keys(source: str) -> KeyRing:
    """A key ring from a file path or inline JSON (``EDITWRAP_KEYS`` may hold either)."""
    text, where = source, "EDITWRAP_KEYS"
    if not source.lstrip().startswith("{"):
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"--keys: no key file at {source}")
        where = str(path)
        text = path.read_text(encoding="utf-8")
        if os.name == "posix" and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO) and any(
                '"key"' in line for line in text.splitlines()):
            print(f"editwrap serve: warning: {path} holds keys in clear and other users may read it; "
                  f"chmod 600 {path} (or store sha256 digests instead)", file=sys.stderr, flush=True)
    try:
        return KeyRing(KeyFile.model_validate(json.loads(text)))
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except ValidationError as e:
        errs = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
        raise ValueError(f"{where}: {errs}") from None
