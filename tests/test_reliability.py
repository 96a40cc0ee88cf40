"""Issue #16: every bad input is a clear one-line error before any work, and the same command gives the same result.

One test per class of input: recipe values, data (labels, encodings, paths, sizes), the command line, the student
folder's integrity, and the trained tokenizer's determinism across processes.
"""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from zoo.cli import main
from zoo.data import DataError, load
from zoo.recipe import load_recipe


# ----------------------------------------------------------------------------------------------------------- recipes
@pytest.mark.parametrize(
    "override, key",
    [
        ("train.checkpoint_every=0", "train.checkpoint_every"),
        ("train.log_every=-1", "train.log_every"),
        ("controller.interval=0", "controller.interval"),
        ("train.gradient_accumulation_steps=0", "train.gradient_accumulation_steps"),
        ("stages.soft_distill.lr=.nan", "stages.soft_distill.lr"),
        ("stages.soft_distill.lr=-1", "stages.soft_distill.lr"),
        ("train.grad_clip=.inf", "train.grad_clip"),
        ("stages.mixed_distill.weights.kl=-5", "stages.mixed_distill.weights.kl"),
        ("losses.feature=.nan", "losses.feature"),
        ("data.max_train_samples=0", "data.max_train_samples"),
        ("student=hybrid_tinny", "student"),
    ],
)
def test_recipe_values_are_checked_at_load_and_name_the_key(override, key):
    with pytest.raises(ValueError, match=re.escape(key) + "="):
        load_recipe("quickstart", [override])


def test_exponent_numbers_are_numbers(tmp_path):
    """YAML 1.1 reads 1e-4 (no dot) as a string; an lr written so is the number a user means, in an override and
    in a recipe file."""
    assert load_recipe("quickstart", ["stages.soft_distill.lr=1e-4"]).stages.soft_distill.lr == 1e-4
    path = tmp_path / "r.yaml"
    path.write_text("name: r\nstages:\n  soft_distill: {steps: 2, lr: 5E-3}\n")
    assert load_recipe(path).stages.soft_distill.lr == 5e-3
    with pytest.raises(ValueError, match="stages.soft_distill.lr must be a number; got '1e'"):
        load_recipe("quickstart", ["stages.soft_distill.lr=1e"])


def test_recipe_without_stages_is_an_error(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("name: empty\nstages: {}\n")
    with pytest.raises(ValueError, match="stages=.*at least one"):
        load_recipe(path)


def test_recipe_errors_come_before_any_work(tmp_path, capsys):
    """The CLI exits 1 with one line, and the run folder is never made (no data read, no teacher trained)."""
    out = tmp_path / "run"
    assert main(["distill", "--out", str(out), "train.log_every=0"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.log_every=0" in err and "Traceback" not in err
    assert not out.exists()


def test_diverging_baseline_names_the_stage_whose_lr_it_borrowed():
    from types import SimpleNamespace

    from zoo.train import loop

    run = SimpleNamespace(log=lambda m: None, record=lambda **k: None, global_step=0)
    job = SimpleNamespace(
        name="raw_student", lr_key="stages.mixed_distill.lr", settings=SimpleNamespace(max_rollbacks=0)
    )
    import torch

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    good = {"step": 0, "model": model.state_dict(), "optimizer": optimizer.state_dict()}
    with pytest.raises(loop.Diverged, match=r"lower the learning rate \(stages\.mixed_distill\.lr\)"):
        loop._rollback(run, job, {"step": 3, "rollbacks": []}, model, optimizer, good)


# --------------------------------------------------------------------------------------------------------------- CLI
def test_overrides_anywhere_and_conflicts(tmp_path, capsys):
    from zoo.commands._shared import recipe_and_overrides

    assert recipe_and_overrides(["a=1", "s1", "b=2"], {}) == ("s1", ["a=1", "b=2"])
    with pytest.raises(ValueError, match="--student hybrid_small and student=hybrid_tiny"):
        recipe_and_overrides(["student=hybrid_tiny"], {"student": ("--student", "hybrid_small")})
    with pytest.raises(ValueError, match="--data x.csv and data.source=y.csv"):
        recipe_and_overrides(["data.source=y.csv"], {"data.source": ("--data", "x.csv")})
    with pytest.raises(ValueError, match="two recipes"):
        recipe_and_overrides(["s1", "quickstart"], {})
    # an override after an option reaches the recipe (here: an invalid one, refused before any work)
    assert main(["distill", "quickstart", "--out", str(tmp_path / "r"), "controller.interval=0"]) == 1
    assert "controller.interval=0" in capsys.readouterr().err
    assert main(["distill", "--student", "hybrid_small", "student=hybrid_tiny", "--out", str(tmp_path / "r")]) == 1
    assert "disagree" in capsys.readouterr().err


def test_recipe_folder_and_shadowing(tmp_path, monkeypatch):
    from zoo.recipe import recipe_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "quickstart").mkdir()
    assert recipe_path("quickstart").name == "quickstart.yaml"  # the bundled one, not the folder
    (tmp_path / "mine").mkdir()
    with pytest.raises(FileNotFoundError, match="is a folder"):
        recipe_path("mine")
    with pytest.raises(FileNotFoundError, match="is a folder"):
        recipe_path("./quickstart")


def test_skip_bad_exists_on_distill_and_finetune():
    from zoo.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["distill", "--skip-bad"]).skip_bad
    assert parser.parse_args(["finetune", "x", "--data", "d", "--skip-bad"]).skip_bad


# -------------------------------------------------------------------------------------------------------------- data
def _png(path, size=(6, 6)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, 128).save(path)


def _csv(tmp_path, rows, name="data.csv"):
    import pandas as pd

    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_label_column_and_empty_labels(tmp_path):
    with pytest.raises(DataError, match="no label column 'label'"):
        load(_csv(tmp_path, [{"text": f"t{i}"} for i in range(6)]))
    rows = [{"text": f"t{i}", "label": ["a", "b", ""][i % 3]} for i in range(9)]
    path = tmp_path / "empty.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match="row 2, column 'label': empty label"):
        load(path)
    assert load(path, on_error="skip").report.skipped_rows == 3


def test_one_class_and_label_only_in_validation(tmp_path):
    with pytest.raises(DataError, match="at least two classes"):
        load(_csv(tmp_path, [{"text": f"t{i}", "label": "a"} for i in range(6)]))
    rows = [{"text": f"t{i}", "label": "ab"[i % 2], "split": "train"} for i in range(6)]
    rows += [{"text": "v", "label": "c", "split": "validation"}]
    with pytest.raises(DataError, match=r"\['c'\] appear in validation but never in train"):
        load(_csv(tmp_path, rows))


@pytest.mark.parametrize("labels", [["01", "1", "2"], ["1", "1.0", "2"]])
def test_labels_differing_only_in_number_spelling(tmp_path, labels):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": f"t{i}", "label": labels[i % 3]}) + "\n" for i in range(9)))
    with pytest.raises(DataError, match=f"'{labels[0]}' and '{labels[1]}'.*same number"):
        load(path)


def test_non_utf8_csv_and_malformed_jsonl_name_the_place(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(b"text,label\nok,a\ncaf\xe9,b\n")
    with pytest.raises(DataError, match=r"byte 19 \(line 3\) is not UTF-8"):
        load(path)
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": \n')
    with pytest.raises(DataError, match=r"line 2 \(byte 28\) is not valid JSON"):
        load(path)


def test_paths_leaving_the_data_folder(tmp_path):
    _png(tmp_path / "outside.png")
    (tmp_path / "data").mkdir()
    rows = [{"image": "../outside.png", "label": "ab"[i % 2]} for i in range(6)]
    path = _csv(tmp_path / "data", rows)
    with pytest.raises(DataError, match="leaves the data file's folder"):
        load(path)
    assert len(load(path, allow_outside_paths=True).splits["train"]) > 0


def test_images_over_the_pixel_limit_are_refused_from_the_header(tmp_path, monkeypatch):
    import zoo.data.dataset as ds

    _png(tmp_path / "big.png", size=(40, 30))
    monkeypatch.setattr(ds, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DataError, match="40x30 = 1200 pixels, over the limit of 1000"):
        ds.decode_image("big.png", tmp_path, full=False)


def test_wav_whose_header_promises_more_frames(tmp_path):
    import zoo.data.dataset as ds

    path = tmp_path / "a.wav"
    sf.write(path, np.zeros(800, dtype=np.float32), 8000, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[:-400])  # header still says 1600 bytes of samples
    for full in (True, False):
        with pytest.raises(DataError, match="cut short: its header promises 1600 bytes of samples, it holds 1200"):
            ds.decode_audio(path, full=full)


# ------------------------------------------------------------------------------------------------------- determinism
def test_tokenizer_is_the_same_in_two_processes(tmp_path):
    """The vocabulary used to depend on the Rust trainer's hash order: train it in two fresh processes."""
    code = (
        "import sys, json; from zoo.modalities.text import train_wordpiece_tokenizer as t; "
        "c = [f'word{i % 7} tie{i % 5} ab ba cd dc x{i}' for i in range(200)]; "
        "print(json.dumps(sorted(t(c, vocab_size=60).get_vocab().items())))"
    )
    outs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    ]
    assert outs[0] == outs[1] and len(json.loads(outs[0])) == 60


# ------------------------------------------------------------------------------------------- students and teachers
@pytest.fixture
def student_folder(tmp_path):
    import zoo

    student = zoo.create_student("hybrid_test", modalities=["image"], num_classes=3)
    student.save_pretrained(tmp_path / "s")
    return tmp_path / "s"


def test_weights_digest_is_recorded_and_checked(student_folder):
    from safetensors import safe_open

    from zoo.io import DIGEST_KEY
    from zoo.students import load_student

    path = student_folder / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        assert len(f.metadata()[DIGEST_KEY]) == 64
    data = bytearray(path.read_bytes())
    data[-200:-100] = bytes(100)  # damage tensor bytes, not the header: the file still parses
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="model.safetensors: the tensors do not match the sha256 digest"):
        load_student(student_folder)


def test_non_finite_weights_are_refused_with_the_tensor_name(student_folder):
    import torch

    import zoo
    from zoo.compress.quant import quantize_student
    from zoo.students import load_student

    student = load_student(student_folder)
    name, param = next((n, p) for n, p in student.named_parameters() if p.dim() >= 2)
    with torch.no_grad():
        param.view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match=f"quantize: tensor '{re.escape(name)}' holds 1 NaN"):
        quantize_student(student, [])
    student.save_pretrained(student_folder)
    with pytest.raises(ValueError, match=f"tensor '{re.escape(name)}' holds 1 NaN or infinite"):
        zoo.load(str(student_folder))


def test_config_json_wrong_type_names_the_key(student_folder):
    from zoo.students import load_student

    config = json.loads((student_folder / "config.json").read_text())
    config["embed_dim"] = "32"
    (student_folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config.json: embed_dim must be an integer; got '32'"):
        load_student(student_folder)


def test_mistyped_paths_are_one_line_and_not_a_hub_problem(tmp_path, monkeypatch, capsys):
    from zoo.hub import resolve_model_folder
    from zoo.teachers import load_teacher

    monkeypatch.chdir(tmp_path)
    (tmp_path / "my-bert").mkdir()
    with pytest.raises(OSError, match=r"no local path 'my-bertt' \(did you mean 'my-bert'\?\)"):
        load_teacher("my-bertt", modality="text")
    with pytest.raises(OSError, match=r"no local path './my-bertt' \(did you mean"):
        resolve_model_folder("./my-bertt")
    assert main(["distill", "--teacher", "text=./my-bertt", "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "did you mean" in err and "Traceback" not in err and not (tmp_path / "r").exists()


def test_teacher_labels_in_another_order_are_remapped_by_name():
    import torch

    from zoo.teachers.base import Teacher, TeacherOutput

    class Fixed(Teacher):
        def _values(self, sample):
            return sample["x"]

        def _preprocess(self, values, ids):
            return {"x": torch.tensor(values, dtype=torch.float32)}

        def _forward(self, inputs, layers, pool):
            return TeacherOutput(logits=inputs["x"])

    teacher = Fixed(
        torch.nn.Linear(1, 1), modality="text", name="t", num_classes=3, id2label={0: "c", 1: "a", 2: "b"},
        feature_layers=[], preprocess_config={}, identity={},
    )  # fmt: skip
    teacher.similarity_scale = None
    before = teacher.fingerprint
    teacher.relabel([1, 2, 0])  # the data's order: a, b, c
    assert teacher.id2label == {0: "a", 1: "b", 2: "c"} and teacher.fingerprint != before
    out = teacher([{"id": 0, "x": [0.0, 1.0, 2.0]}])
    assert out.logits.tolist() == [[1.0, 2.0, 0.0]]


# ------------------------------------------------------------------------------------------- run folder and resume
TINY_RUN = [
    "student=hybrid_test",
    "data.batch_size=16",
    "data.eval_batch_size=64",
    "data.max_train_samples=64",
    "data.label_fraction=1.0",
    "stages.pretrain=null",
    "stages.soft_distill.steps=2",
    "stages.mixed_distill=null",
    "stages.prune=null",
    "stages.quant_finetune=null",
    "stages.hardware_adapt=null",
    "train.baseline=false",
    "train.latency_repeats=1",
    "controller.eval_samples=16",
    "teacher_training.modalities=[text]",
    "teacher_training.folds=1",
    "teacher_training.steps=2",
    "teacher_training.hidden_size=32",
    "teacher_training.num_layers=1",
    "teacher_training.num_heads=2",
    "teacher_training.intermediate_size=64",
    "student_overrides.text.vocab_size=200",
]


@pytest.fixture(scope="module")
def tiny_text_data():
    from zoo import data as zdata

    return zdata.quickstart(train_size=64, validation_size=16, test_size=16, modalities=("text",))


def test_resume_with_changed_settings_or_data_refuses(tiny_text_data, tmp_path):
    from zoo import data as zdata
    from zoo.train.loop import StopRun
    from zoo.train.run import distill

    out = tmp_path / "run"
    with pytest.raises(StopRun):
        distill("quickstart", out, data=tiny_text_data, overrides=TINY_RUN, stop_after_steps=1, progress=False)
    assert not (out / ".lock").exists()  # released when the run stops
    with pytest.raises(ValueError, match=r"other settings.*stages\.soft_distill\.lr: 0\.002 -> 0\.01"):
        distill("quickstart", out, data=tiny_text_data, overrides=[*TINY_RUN, "stages.soft_distill.lr=0.01"],
                resume=True, progress=False)  # fmt: skip
    other = zdata.quickstart(train_size=64, validation_size=16, test_size=16, modalities=("text",), seed=1)
    with pytest.raises(ValueError, match=r"other settings, data or teachers \(data\.test: .*data\.train: "):
        distill("quickstart", out, data=other, overrides=TINY_RUN, resume=True, progress=False)


def test_a_second_run_into_a_locked_folder_refuses(tmp_path):
    from zoo.train.run import distill

    out = tmp_path / "run"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(str(sleeper.pid))
        with pytest.raises(FileExistsError, match=rf"in use by another zoo distill \(pid {sleeper.pid}"):
            distill("quickstart", out, overrides=TINY_RUN, progress=False)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert (out / ".lock").read_text() == str(sleeper.pid)  # the other run's lock is left alone


@pytest.mark.slow
def test_the_same_distill_command_gives_the_same_weights_in_two_processes(tmp_path):
    """Tokenizer trained on the texts, a teacher trained here, a student distilled: twice, in fresh processes."""
    from safetensors import safe_open

    from zoo.io import DIGEST_KEY

    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    digests = []
    for k in range(2):
        out = tmp_path / f"run{k}"
        cmd = [sys.executable, "-m", "zoo.cli", "distill", "--out", str(out), "--no-progress", *TINY_RUN]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**__import__("os").environ, **env},
                              timeout=600)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        with safe_open(str(out / "model.safetensors"), framework="pt") as f:
            digests.append((f.metadata()[DIGEST_KEY], (out / "tokenizer.json").read_bytes()))
    assert digests[0] == digests[1]


# ------------------------------------------------------------------------------------------------- atomic folders
def test_prune_into_an_existing_folder_swaps_a_complete_one_in(student_folder, tmp_path, monkeypatch):
    import zoo.commands.prune as prune_cmd
    from zoo.students import load_student

    out = tmp_path / "pruned"
    assert main(["prune", str(student_folder), "--keep", "0.5", "--out", str(out)]) == 0
    first = (out / "model.safetensors").read_bytes()
    (tmp_path / ".save-999999-x").mkdir()  # leftovers of a killed process (no such pid)
    (tmp_path / ".pruned.new-999999").mkdir()

    def killed(*args, **kwargs):  # the process dies while writing the new folder
        raise KeyboardInterrupt

    monkeypatch.setattr(prune_cmd, "metrics_entry", killed)
    with pytest.raises(KeyboardInterrupt):
        main(["prune", str(student_folder), "--keep", "0.8", "--out", str(out)])
    assert (out / "model.safetensors").read_bytes() == first and load_student(out)  # the old folder, whole
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # leftovers and the stage are gone
    monkeypatch.undo()
    assert main(["prune", str(student_folder), "--keep", "0.8", "--out", str(out)]) == 0
    assert (out / "model.safetensors").read_bytes() != first and load_student(out)


def test_writing_into_a_folder_zoo_did_not_write_needs_overwrite(student_folder, tmp_path, capsys):
    teacher = tmp_path / "my-teacher"
    teacher.mkdir()
    (teacher / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"]}))
    assert main(["prune", str(student_folder), "--keep", "0.5", "--out", str(teacher)]) == 1
    assert "pass --overwrite" in capsys.readouterr().err
    assert json.loads((teacher / "config.json").read_text())["architectures"]  # untouched
    assert main(["prune", str(student_folder), "--keep", "0.5", "--out", str(teacher), "--overwrite"]) == 0


def test_eval_on_data_with_other_label_names_refuses(tmp_path, capsys):
    import zoo

    student = zoo.create_student(
        "hybrid_test", modalities=["image"], num_classes=3, id2label={"0": "cat", "1": "dog", "2": "owl"}
    )
    student.save_pretrained(tmp_path / "s")
    _png(tmp_path / "d" / "a.png")
    rows = [{"image": "a.png", "label": ["x", "y", "z"][i % 3], "split": ["train", "test"][i % 2]} for i in range(12)]
    assert main(["eval", str(tmp_path / "s"), "--data", str(_csv(tmp_path / "d", rows))]) == 1
    err = capsys.readouterr().err
    assert "labels the student" in err and "'cat', 'dog', 'owl'" in err and "unknown label 'x'" in err
    assert err.count("\n") == 1
    rows = [{**r, "label": ["owl", "cat", "dog"][i % 3]} for i, r in enumerate(rows)]  # same names, another order
    assert main(["eval", str(tmp_path / "s"), "--data", str(_csv(tmp_path / "d", rows))]) == 0
