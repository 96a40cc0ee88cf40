"""The ``zoo`` command line as a user meets it: --version, a verb's own usage on its errors, JSON output, -q / -v
and --no-progress, rounded numbers in log lines."""

import json
import os

import pytest

import zoo
from zoo import console
from zoo.cli import main


@pytest.fixture(autouse=True)
def restore_console(monkeypatch):
    names = (
        "TQDM_DISABLE",
        "HF_HUB_DISABLE_PROGRESS_BARS",
        "HF_DATASETS_DISABLE_PROGRESS_BARS",
        "TRANSFORMERS_VERBOSITY",
    )
    for name in names:
        monkeypatch.delenv(name, raising=False)  # restored after the test, like the bars and the verbosity below
    yield
    console.configure()
    from huggingface_hub.utils import enable_progress_bars

    enable_progress_bars()


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"zoo {zoo.__version__}"


def test_a_verbs_error_shows_the_verbs_usage(capsys):
    with pytest.raises(SystemExit) as e:
        main(["card", "somewhere", "--bogus"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("usage: zoo card") and "unrecognized arguments: --bogus" in err


def test_list_json(capsys):
    assert main(["list", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(zoo.list_models()) == set(out["architectures"]) and isinstance(out["published"], list)
    assert all(isinstance(n, int) and n > 0 for n in out["architectures"].values())


def test_quiet_hides_log_lines_and_every_progress_bar(capsys):
    console.configure(quiet=True)
    console.log("[zoo distill] data: 300 rows")
    assert capsys.readouterr().out == "" and not console.progress
    assert os.environ["TQDM_DISABLE"] == "1" and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    from tqdm.auto import tqdm

    assert tqdm(range(3)).disable  # a library's bar, though tqdm was imported before
    console.configure()
    assert not tqdm(range(3), file=open(os.devnull, "w")).disable
    console.configure(verbose=True)
    console.log("shown")
    assert capsys.readouterr().out == "shown\n" and os.environ["TRANSFORMERS_VERBOSITY"] == "info"


def test_common_options_go_before_or_after_the_verb(tmp_path, capsys):
    from test_cards import make_student_folder

    folder = make_student_folder(tmp_path / "run")
    assert main(["-q", "card", str(folder)]) == 0 and not console.progress
    assert capsys.readouterr().out.strip() == str(folder / "README.md")  # results still print
    assert main(["card", str(folder), "--no-progress", "-v"]) == 0
    assert not console.progress and console.level == console.VERBOSE


def test_the_tokenizer_trainer_honours_no_progress():
    from zoo.modalities.text import train_wordpiece_tokenizer

    console.configure(no_progress=True)
    assert train_wordpiece_tokenizer(["one two three"] * 4, vocab_size=40) is not None


def test_log_lines_round_numbers():
    from zoo.compress.guard import fmt_settings

    assert fmt_settings({"latency_budget_ms": 0.2354296499447628, "runtime": "onnxruntime", "keep": 0.7}) == (
        "latency_budget_ms=0.2354, runtime=onnxruntime, keep=0.7"
    )
