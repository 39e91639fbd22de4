"""gridpatrol: video patrol and sensor ingestion for urban grid-management centres."""

__version__ = "0.1.0"
