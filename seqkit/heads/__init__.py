"""Output heads that turn per-token scores into tag sequences (CRF, tagging schemes)."""
