"""Runs that never end on their own: ``watch`` (a folder's changes as they happen) and ``ingest --missing
--follow`` (the documents another writer adds). ``loop.py`` is what both are: one indexer session, a step at an
interval, failures survived (``recovery.py``), health where ``progress`` reads it."""
