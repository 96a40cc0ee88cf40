"""What the ``zoo`` command prints besides its results: log lines (``-q`` hides them), library details (``-v`` shows
them) and progress bars (``--no-progress`` or ``-q`` silences every one: ours, tqdm's in the libraries we call,
huggingface_hub's and the tokenizer trainer's). No torch here: ``zoo --help`` imports it."""

from __future__ import annotations

import functools
import os
import sys
import time

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


class Progress:
    """A tqdm bar on a terminal; off a terminal (a log file, a CI job) a log line every ``every`` steps and at the
    end, with the step, the loss, the rate and the ETA, so a redirected run still shows where it is.

    ``show``: True forces the bar, False forces the lines, None picks by whether stdout is a terminal.
    """

    def __init__(self, total: int, initial: int, desc: str, log, show: bool | None = None, every: int = 50,
                 unit: str = "step"):  # fmt: skip
        from tqdm.auto import tqdm

        self.tty = sys.stdout.isatty() if show is None else show
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not self.tty, leave=False)
        self.total, self.step, self.log, self.every, self.desc, self.unit = total, initial, log, every, desc, unit
        self.t0, self.s0, self.next = time.perf_counter(), initial, (initial // every + 1) * every

    def update(self, n: int = 1, loss: float | None = None) -> None:
        self.step += n
        self.bar.update(n)
        if loss is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        if not self.tty and (self.step >= self.next or self.step >= self.total):
            self.next = (self.step // self.every + 1) * self.every
            rate = (self.step - self.s0) / max(time.perf_counter() - self.t0, 1e-9)
            eta = (self.total - self.step) / max(rate, 1e-9)
            shown = "" if loss is None else f" loss {loss:.4f}"
            unit = self.unit
            self.log(f"{self.desc}: {unit} {self.step}/{self.total}{shown} {rate:.2f} {unit}s/s eta {eta:.0f}s")

    def close(self) -> None:
        self.bar.close()


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
