"""Input handling: validation of volumes, features and metadata."""

from ._validation import check_metadata, check_volumes

__all__ = ["check_metadata", "check_volumes"]
