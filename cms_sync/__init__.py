"""cms-sync: keeps Filestack in step with a Sanity dataset."""

__version__ = "0.1.0"
