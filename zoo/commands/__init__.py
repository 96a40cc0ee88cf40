"""The ``zoo`` command line: one module per verb (as accelerate's ``commands/``), each with ``add_cli(subparsers)``.

``zoo.cli`` imports every verb's module to build the parser; shared helpers live in ``_shared``.
"""

# The verbs in the order of ``zoo --help``.
COMMANDS = [
    "list",
    "distill",
    "teacher",
    "eval",
    "data",
    "finetune",
    "card",
    "push",
    "prune",
    "quantize",
    "export",
    "catalogue",
]
