"""The command line's argument types: each turns one option's text into its value, or raises
argparse.ArgumentTypeError with a message that says what was expected (argparse prints it)."""

from __future__ import annotations

import argparse


def factors(value: str) -> list[float]:
    """'1,1.5,2' -> [1.0, 1.5, 2.0], each at least 1."""
    try:
        values = [float(v) for v in value.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected numbers like 1.0,1.5,2.0, got {value}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"factors must be at least 1, got {value}")
    return values


def image_shape(value: str) -> tuple[int, int, int]:
    """'3x224x224' -> (3, 224, 224)."""
    parts = value.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected C x H x W such as 3x224x224, got {value!r}")
    return tuple(int(p) for p in parts)


def positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def positive_ints(value: str) -> tuple[int, ...]:
    """One positive int per branch, separated by commas: "3,5" is (3, 5)."""
    parts = value.split(",")
    if not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"must be positive ints and commas, got {value!r}")
    return tuple(int(p) for p in parts)


def positive_float(value: str) -> float:
    x = float(value)
    if not x > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return x
