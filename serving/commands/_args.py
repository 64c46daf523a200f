"""Value types for ``smserve``'s options: numbers refused with a message that says why."""

from __future__ import annotations

import argparse


def whole_number(text: str, what: str = "a whole number") -> int:
    """``text`` as an int; an argparse error saying it is not ``what`` otherwise."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def count(text: str) -> int:
    """A whole number, 0 or more."""
    value = whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return value


def positive(text: str) -> int:
    """A whole number, 1 or more."""
    value = count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be 1 or more")
    return value


def port(text: str) -> int:
    """A TCP port, 1 to 65535."""
    value = whole_number(text, "a port number")
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (1..65535)")
    return value
