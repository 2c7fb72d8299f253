"""Subcommands of ``ood-perception``: one module each, with ``register(subparsers)``."""
