"""Executors: what turns a run's items into pixels or vectors (``base.py`` is the seam). ``local.py`` with
``pools.py`` and ``decode_worker.py`` runs on this machine; ``ray/`` on a Ray cluster."""
