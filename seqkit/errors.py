"""Errors a user can cause: the CLI prints them as one line and exits non-zero."""

from __future__ import annotations


class SeqkitError(Exception):
    """A problem with the user's input (recipe, data, command line), not a bug in seqkit.

    The message must say what is wrong, where (file, line or key path) and how to fix it.
    """

    exit_code = 2
    quiet = False  # already said by another process of a data-parallel run: exit without printing


class RecipeError(SeqkitError):
    """A recipe that cannot be loaded or validated."""


class DataError(SeqkitError):
    """Input data that cannot be read."""
