"""`python -m taskmanager` is the `taskmanager` command."""

from taskmanager.cli import main

main()
