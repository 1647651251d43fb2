"""Errors kdistill reports to users: one clear line, saying what is wrong and what to do."""

from __future__ import annotations

import difflib


class KdistillError(Exception):
    """A user-facing error. The CLI prints its message on one line (traceback only with --debug)."""


class PluginError(KdistillError):
    """A plugin failed to load, or two plugins registered the same name."""


class UnknownNameError(KdistillError, KeyError):
    """A name was asked for that nobody registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DataError(KdistillError):
    """Input data (task files, datasets, checkpoints) is missing or malformed."""


class MissingDataError(DataError):
    """A domain's data is not installed at all (nothing at the data location): ``Domain.fetch_data`` can install it.

    Commands that need the data install it on first use when they see this error (``kdistill.tasks.ensure_data``).
    """


class CheckpointError(KdistillError):
    """A checkpoint is missing, corrupt, or belongs to another domain or config."""


def closest(name: str, choices) -> str | None:
    """The closest of ``choices`` to ``name``, or None if nothing is close."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return matches[0] if matches else None


def unknown_name(kind: str, name: str, choices) -> UnknownNameError:
    """An error for an unknown ``kind`` called ``name``, listing the choices and the closest match."""
    choices = sorted(choices)
    guess = closest(name, choices)
    hint = f" Did you mean {guess!r}?" if guess else ""
    listed = ", ".join(choices) if choices else "none registered"
    return UnknownNameError(f"unknown {kind} {name!r}.{hint} Available: {listed}.")
