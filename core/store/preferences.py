"""Preferences: what the user last picked (the dataset, and per dataset the embeddings), so a
reload or a restart opens it again instead of the alphabetically first dataset."""

from __future__ import annotations

from core.store.connection import StoreConnection, _now

LAST_DATASET = "last_dataset"
LAST_ENCODER_KEY = "last_encoder_key"
_APP_WIDE = ""  # the ``dataset`` column of a preference that belongs to no dataset


class PreferencesMixin(StoreConnection):
    """A small key/value table of remembered choices (``preferences``)."""

    def preference(self, name: str, dataset: str = _APP_WIDE) -> str | None:
        rows = (
            self._cursor()
            .execute("SELECT value FROM preferences WHERE name = ? AND dataset = ?", [name, dataset])
            .fetchall()
        )
        return str(rows[0][0]) if rows else None

    def set_preference(self, name: str, value: str, dataset: str = _APP_WIDE) -> None:
        """Remember ``value``; writes only when it changed (pages call this on every rerun)."""
        if self.preference(name, dataset) == value:
            return
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO preferences VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name, dataset) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                [name, dataset, value, _now()],
            )

    def last_dataset(self) -> str | None:
        """The dataset picked last (on any page, in any session), if it still exists."""
        name = self.preference(LAST_DATASET)
        return name if name is not None and name in self._dataset_name_set() else None

    def remember_dataset(self, dataset: str) -> None:
        self.set_preference(LAST_DATASET, dataset)

    def last_encoder_key(self, dataset: str) -> str | None:
        """The embeddings (encoder key) last picked for ``dataset``."""
        return self.preference(LAST_ENCODER_KEY, dataset)

    def remember_encoder_key(self, dataset: str, encoder_key: str) -> None:
        self.set_preference(LAST_ENCODER_KEY, encoder_key, dataset)

    def _dataset_name_set(self) -> set[str]:
        return {r[0] for r in self._cursor().execute("SELECT name FROM datasets").fetchall()}
