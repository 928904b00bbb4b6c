"""Batch and real-time indexing: sources → embed → stores, with the pipeline seeing only protocols."""
