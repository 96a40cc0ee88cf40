"""The ``zoo`` command line: one module per verb (as accelerate's ``commands/``), each with ``add_cli(subparsers)``.

A verb's module imports only argparse at import time, so ``zoo --help`` stays fast; its handler imports the feature.
"""

# The verbs in the order of ``zoo --help``.
COMMANDS = ["list", "distill", "eval", "data", "finetune", "card", "push", "prune", "quantize", "export", "catalogue"]
