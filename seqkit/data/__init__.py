"""Readers that turn data files into tagged corpora."""
