"""One module per ``zoo`` verb; each defines ``add_cli(subparsers)`` (see ``zoo.cli``)."""
