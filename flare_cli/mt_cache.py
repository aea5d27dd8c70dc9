"""Content-addressed translation cache in sqlite: key = sha256 of everything that decides the output.

Each `put_many` is its own transaction, so a process killed between batches loses nothing that
was already put. WAL mode lets a second reader (another run, a test) look in while one writes.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

from flare_cli.errors import DataError


def cache_key(**parts) -> str:
    """sha256 over a canonical JSON of model, revision, engine, compute type, device kind, languages,
    decoding settings and text: whatever can change a translation (translate._Translator._key)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class TranslationCache:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS translations (key TEXT PRIMARY KEY, text TEXT NOT NULL)")
            self._db.commit()
        except sqlite3.DatabaseError as err:
            raise DataError(f"translation cache {self.path} is unreadable ({err}); move it away to start afresh") from None

    def get_many(self, keys: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for start in range(0, len(keys), 500):  # stay under sqlite's bound-parameter limit
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(self._db.execute(f"SELECT key, text FROM translations WHERE key IN ({marks})", chunk))
        return found

    def put_many(self, items: list[tuple[str, str]]) -> None:
        with self._db:  # one transaction per batch
            self._db.executemany("INSERT OR REPLACE INTO translations (key, text) VALUES (?, ?)", items)

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM translations").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "TranslationCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
