"""Word, through the state store, that models were registered: what makes every replica load them.

The registry's index stays beside its model files (a local folder, or a bucket every replica reads), so
there is one source of truth for what is registered. The store carries only the news: a gateway asked
to reload (`POST /admin/models/reload`) bumps a generation, and every gateway on the store that sees it
move lists the registry and loads what it has not (`gateway/app.py`'s registry follower). Without it,
a replica behind a balancer learned of a model only when a split named it.

>>> from statestore.local import LocalStore
>>> import tempfile, pathlib
>>> store = LocalStore(pathlib.Path(tempfile.mkdtemp()))
>>> news = RegistryNews(store.document(DOCUMENT))
>>> news.generation(), news.announce(), news.generation()
(0, 1, 1)
"""

from __future__ import annotations

from statestore import Doc, Document

DOCUMENT = "registry_changes"


class RegistryNews:
    def __init__(self, document: Document) -> None:
        self._document = document

    def generation(self) -> int:
        """How many announcements the store has seen (0 before the first)."""
        return int(self._document.read().get("generation", 0))

    def announce(self) -> int:
        """Tells every gateway on the store to look for new models; returns the new generation."""

        def bumped(doc: Doc) -> Doc:
            return {**doc, "generation": int(doc.get("generation", 0)) + 1}

        return int(self._document.update(bumped)["generation"])
