"""What the ``zoo`` command prints besides its results: log lines (``-q`` hides them), library details (``-v`` shows
them) and progress bars (``--no-progress`` or ``-q`` silences every one: ours, tqdm's in the libraries we call,
huggingface_hub's and the tokenizer trainer's). No torch here: ``zoo --help`` imports it."""

from __future__ import annotations

import functools
import os
import sys

QUIET, NORMAL, VERBOSE = 0, 1, 2
level = NORMAL
progress = True


def configure(*, quiet: bool = False, verbose: bool = False, no_progress: bool = False) -> None:
    """Set the verbosity and the progress bars for this process (and the processes it starts)."""
    global level, progress
    level = QUIET if quiet else VERBOSE if verbose else NORMAL
    progress = not (quiet or no_progress)
    if not progress:
        _disable_progress_bars()
    elif "tqdm" in sys.modules and isinstance(sys.modules["tqdm"].tqdm.__dict__["__init__"], functools.partialmethod):
        sys.modules["tqdm"].tqdm.__init__ = sys.modules["tqdm"].tqdm.__dict__["__init__"].func  # bars back
    if level != NORMAL:  # transformers' messages: its info with -v, its errors only with -q
        verbosity = "info" if level == VERBOSE else "error"
        os.environ["TRANSFORMERS_VERBOSITY"] = verbosity
        if "transformers" in sys.modules:
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity(hf_logging.INFO if level == VERBOSE else hf_logging.ERROR)


def log(line: str) -> None:
    """A log line on stdout, unless ``-q``."""
    if level >= NORMAL:
        print(line, flush=True)


def _disable_progress_bars() -> None:
    # the environment, for processes started from here (torchrun children) and libraries imported later
    os.environ.update(TQDM_DISABLE="1", HF_HUB_DISABLE_PROGRESS_BARS="1", HF_DATASETS_DISABLE_PROGRESS_BARS="1")
    # tqdm reads TQDM_DISABLE when it is imported, which has happened by now: make disable=True its default, as
    # that variable would have (a bar that passes disable= itself keeps its choice; ours pass the CLI's)
    import tqdm

    if not isinstance(tqdm.tqdm.__dict__["__init__"], functools.partialmethod):
        tqdm.tqdm.__init__ = functools.partialmethod(tqdm.tqdm.__init__, disable=True)
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # huggingface_hub's bars, which transformers' follow
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
