"""Subcommands of ``smserve`` that live in their own modules.

Each module has ``register(subparsers)``; :mod:`serving.cli` lists them in
``COMMAND_MODULES`` and maps errors to exit codes for all of them. Keep
heavy imports inside the command functions so ``smserve --help`` stays fast.
"""
