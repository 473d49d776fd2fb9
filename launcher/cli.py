"""Command line (placeholder until the CLI lands): ``virt-launcher``."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``virt-launcher`` console script."""
    del argv
    return 0
