"""Duplicates in an index: exact copies, the same picture saved again, and visually near pictures (``groups``)."""

from imgvec.duplicates.groups import DEFAULT_THRESHOLDS, KINDS, DuplicateGroup, Duplicates, Member, find_duplicates

__all__ = ["DEFAULT_THRESHOLDS", "KINDS", "DuplicateGroup", "Duplicates", "Member", "find_duplicates"]
