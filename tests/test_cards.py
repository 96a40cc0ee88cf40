"""Model cards: metadata round trip, the comparison table and lineage from a fixture metrics.json, runnable usage
code, the accuracy-vs-latency plot, robustness to missing keys, and ``zoo card``."""

import json
import re
import shutil

import pytest
from huggingface_hub import ModelCard

import zoo
from zoo.bench import update_metrics
from zoo.cards import PLOT_NAME, build_card, write_card
from zoo.cli import main

MODELS = {
    "teacher": {"accuracy": 0.95, "params": 5_000_000, "size_bytes": 20_000_000, "latency_ms": 40.0},
    "raw_student": {"accuracy": 0.70, "params": 200_000, "size_bytes": 800_000, "latency_ms": 2.0},
    "distilled": {"accuracy": 0.85, "params": 200_000, "size_bytes": 800_000, "latency_ms": 2.0},
    "pruned": {"accuracy": 0.84, "params": 150_000, "size_bytes": 600_000, "latency_ms": 1.6, "peak_memory_bytes": 3e6},
    "int8": {"accuracy": 0.83, "params": 150_000, "size_bytes": 160_000, "latency_ms": 1.1},
}
RUN = {
    "recipe": {"name": "quickstart"},
    "dataset": {"name": "quickstart", "splits": {"test": 300}},
    "teachers": {"image": "google/vit-base-patch16-224", "audio": {"path": "/nonexistent/local_ast"}},
    "stages": [
        {"name": "soft_distill", "steps": 100, "lr": 1e-3, "temperature": [4.0, 2.0], "rollbacks": 0},
        {"name": "prune", "steps": 50, "lr": 5e-4, "temperature": 2.0, "rollbacks": [{"step": 120}]},
        {"name": "hardware_adapt", "steps": 0, "lr": 1e-4, "status": "skipped", "reason": "no latency budget"},
    ],
    "raw_student": {"steps": 150, "lr": 1e-3, "weights": {"ce": 1.0, "kl": 0.0}},
    "controller": {
        "trajectory": [
            {"step": 10, "kd_weight": 0.5, "arm": 1, "end_step": 20},
            {"step": 20, "kd_weight": 0.75, "arm": 2, "end_step": 30},
            {"step": 30, "kd_weight": 0.6, "arm": 1},
        ]
    },
}
RUN["stages"][0]["weights"] = {"ce": 0.2, "kl": 0.8, "adaptive": 0.0}


def make_student_folder(folder, models=MODELS, run=RUN, modalities=("image", "audio")):
    student = zoo.create_student("hybrid_test", modalities=list(modalities), num_classes=3)
    student.config.id2label = {"0": "cat", "1": "dog", "2": "bird"}
    student.save_pretrained(folder)
    sections = {"run": run} if run is not None else {}
    update_metrics(folder, models=models, **sections)
    return folder


@pytest.fixture
def run_dir(tmp_path):
    return make_student_folder(tmp_path / "run")


def table_row(text: str, name: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_card_metadata_and_eval_results_round_trip(run_dir):
    path = write_card(run_dir)
    assert path == run_dir / "README.md"
    card = ModelCard.load(path)
    data = card.data
    assert data.library_name == "distill-zoo"
    assert {"distillation", "pruned", "int8", "image", "audio"} <= set(data.tags)
    assert data.base_model == ["google/vit-base-patch16-224"]  # the local teacher path stays out of the metadata
    assert data.datasets == ["quickstart"] and data.license == "apache-2.0"
    assert data.pipeline_tag == "any-to-any"  # image + audio: not image-classification
    # the model-index is this model's result only; the teacher and the baseline are in the card's table
    assert [(r.metric_name, r.metric_value) for r in data.eval_results] == [("accuracy", 0.85)]
    assert all(r.dataset_split == "test" and r.metric_type == "accuracy" for r in data.eval_results)
    assert data.eval_results[0].dataset_name == "quickstart" and data.eval_results[0].task_type == "any-to-any"


@pytest.mark.parametrize(
    "modalities, tag",
    [(["text"], "text-classification"), (["image"], "image-classification"), (["audio"], "audio-classification"),
     (["text", "image", "audio"], "any-to-any")],
)  # fmt: skip
def test_pipeline_tag_fits_the_modalities(tmp_path, modalities, tag):
    card = ModelCard.load(write_card(make_student_folder(tmp_path / "run", modalities=modalities)))
    assert card.data.pipeline_tag == tag and set(modalities) <= set(card.data.tags)


def test_dataset_is_an_id_or_a_path(tmp_path):
    run = {**RUN, "dataset": {"name": "quickstart (seed 0)", "splits": {"test": 300}}}  # an older run's record
    card = ModelCard.load(write_card(make_student_folder(tmp_path / "a", run=run)))
    assert card.data.datasets == ["quickstart"] and card.data.eval_results[0].dataset_name == "quickstart"
    run = {**RUN, "dataset": {"name": "data.csv (csv)", "id": "data/my data.csv", "splits": {"test": 300}}}
    card = ModelCard.load(write_card(make_student_folder(tmp_path / "b", run=run)))
    assert card.data.datasets is None  # a local path is no hub dataset
    assert card.data.eval_results[0].dataset_name == "data/my data.csv" and "on data/my data.csv with" in card.text
    assert "data.csv (csv)" not in card.text and "data.csv (local)" not in card.text


def test_user_strings_are_escaped_in_the_card_body(tmp_path):
    run = {**RUN, "dataset": {"id": "<script>alert(1)</script>", "splits": {"test": 300}}}
    run["stages"] = [dict(RUN["stages"][2], reason="budget <b>|</b>")]
    folder = make_student_folder(tmp_path / "run", run=run)
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {"0": "<img src=x onerror=alert(1)>", "1": "a|b", "2": "bird"}
    (folder / "config.json").write_text(json.dumps(config))
    card = ModelCard.load(write_card(folder))
    body = card.text
    assert "<script>" not in body and "<img" not in body and "<b>" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body and "&lt;img src=x onerror=alert(1)&gt;" in body
    assert "a\\|b" in body  # a | in a label does not split the table cell


def test_encoder_teacher_shows_no_accuracy_instead_of_failing(tmp_path):
    models = {**MODELS, "teacher": {**MODELS["teacher"], "accuracy": None, "no_accuracy": "encoder teacher"}}
    card = ModelCard.load(write_card(make_student_folder(tmp_path / "run", models=models)))
    assert table_row(card.text, "teacher")[1] == "no accuracy (encoder teacher)"
    assert "of the teacher's accuracy" not in card.text  # no ratio against a number that does not exist
    assert [r.metric_value for r in card.data.eval_results] == [0.85]


def test_each_student_folder_card_reports_its_own_model(tmp_path):
    """A subfolder card (as zoo distill writes one in int8/): its model-index is the int8 student's, its table the
    whole comparison, its usage code loads it from the repo with subfolder=."""
    folder = make_student_folder(tmp_path / "int8", run={**RUN, "final_model": "int8"})
    card = build_card(folder, repo_id="me/student", subfolder="int8")
    assert [r.metric_value for r in card.data.eval_results] == [0.83]
    assert table_row(card.text, "teacher")[1] == "95.00%" and table_row(card.text, "int8")[1] == "83.00%"
    assert 'zoo.load("me/student", subfolder="int8")' in card.text


def test_card_table_and_lineage_come_from_metrics(run_dir):
    text = str(build_card(run_dir))
    assert table_row(text, "teacher") == [
        "teacher",
        "95.00%",
        "40.00",
        f"≈ {5_000_000 * 4 / 2**20:.2f} MiB",  # params x 4 bytes (fp32)
        f"{20_000_000 / 2**20:.2f} MiB",
        "5.00M",
    ]
    assert table_row(text, "raw student (no distillation)")[1:3] == ["70.00%", "2.00"]
    assert table_row(text, "distilled student")[1] == "85.00%"
    assert table_row(text, "pruned + KD recovery")[3] == f"{3e6 / 2**20:.2f} MiB"  # measured peak, no estimate mark
    assert table_row(text, "int8")[3:] == [f"≈ {150_000 / 2**10:.2f} KiB", f"{160_000 / 2**10:.2f} KiB", "150.00K"]
    assert table_row(text, "soft_distill") == ["soft_distill", "100", "0.001", "4 -> 2", "ce 0.2, kl 0.8", "0"]
    assert table_row(text, "prune") == ["prune", "50", "0.0005", "2", "n/a", "1"]  # the fixture gives no weights
    assert table_row(text, "hardware_adapt (skipped)")[1] == "0"
    assert "- hardware_adapt (skipped): no latency budget" in text
    assert "150 training steps in 3 stage(s), 1" in text
    assert "trained for 150 steps at learning rate 0.001, loss weights ce 1." in text
    assert "3 recorded updates over steps 10-30." in text
    assert "`kd_weight`: 0.5 -> 0.6 (min 0.5, max 0.75)" in text and "`arm`: 1 x2, 2 x1; last 1" in text
    assert "keeps 89.5% of the teacher's accuracy" in text  # 0.85 / 0.95
    assert "(300 samples)" in text
    assert f"]({PLOT_NAME})" in text


def test_card_names_teachers_trained_in_the_run_without_local_paths(tmp_path):
    run = {**RUN, "teachers": {"image": str(tmp_path / "run" / "teachers" / "image")}, "teachers_trained_here": True}
    card = build_card(make_student_folder(tmp_path / "run", run=run))
    assert "image: `image (trained in this run)`" in card.text and "teachers/image" not in card.text
    assert "distilled from image teachers trained in this run" in card.text and card.data.base_model is None


def test_card_usage_code_runs_against_the_folder(run_dir, capsys):
    text = str(build_card(run_dir))
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert f'zoo.load("{run_dir}")' in code
    exec(compile(code, "card-snippet", "exec"), {"__name__": "card_snippet"})
    label = capsys.readouterr().out.split()[0]
    assert label in {"cat", "dog", "bird"}


def test_card_lists_the_runs_other_students_with_code_that_loads_them(run_dir, capsys):
    shutil.copytree(run_dir, run_dir.parent / "pruned")
    shutil.move(run_dir.parent / "pruned", run_dir / "pruned")
    shutil.copytree(run_dir / "pruned", run_dir / "checkpoints" / "prune")  # training state: not a variant
    shutil.copytree(run_dir / "pruned", run_dir / "hardware")
    update_metrics(run_dir, {"hardware": dict(MODELS["pruned"], accuracy=0.82)})
    text = str(build_card(run_dir))
    assert "- `pruned/`: pruned + KD recovery (84.00% test accuracy;" in text and "`checkpoints/`" not in text
    assert "- `hardware/`: fitted to a latency budget (82.00% test accuracy;" in text
    assert f'hardware = zoo.load("{run_dir}", subfolder="hardware")' in text
    code = "\n".join(re.findall(r"```python\n(.*?)```", text, re.S))
    exec(compile(code, "card-snippets", "exec"), {"__name__": "card_snippet"})
    assert capsys.readouterr().out.split()[0] in {"cat", "dog", "bird"}


def test_accuracy_vs_latency_plot_is_written_atomically(run_dir):
    write_card(run_dir)
    png = (run_dir / PLOT_NAME).read_bytes()
    assert png.startswith(b"\x89PNG")
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_card_with_missing_keys_renders_na(tmp_path):
    folder = make_student_folder(tmp_path / "bare", models={"distilled": {"accuracy": 0.5}}, run=None)
    card = ModelCard.load(write_card(folder))
    assert table_row(card.text, "distilled student") == ["distilled student", "50.00%", "n/a", "n/a", "n/a", "n/a"]
    assert "Recipe `n/a`" in card.text and "Adaptive controller: n/a" in card.text
    assert card.data.base_model is None
    assert [r.metric_value for r in card.data.eval_results] == [0.5]


def test_zoo_card_cli_regenerates_readme(run_dir, capsys):
    (run_dir / "README.md").write_text("stale", encoding="utf-8")
    assert main(["card", str(run_dir), "--repo-id", "me/student"]) == 0
    text = (run_dir / "README.md").read_text(encoding="utf-8")
    assert 'zoo.load("me/student")' in text and "name: me/student" in text
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["models"]["distilled"]["accuracy"] = 0.9
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    assert main(["card", str(run_dir)]) == 0
    assert table_row((run_dir / "README.md").read_text(encoding="utf-8"), "distilled student")[1] == "90.00%"
    assert main(["card", str(run_dir / "nope")]) == 1
    assert "metrics.json is missing" in capsys.readouterr().err


def test_accuracy_vs_latency_marks_the_runtime_and_puts_hardware_at_its_fitted_latency():
    from zoo.cards import latency_points

    models = {
        **MODELS,
        "onnx_int8": {"accuracy": 0.83, "latency_ms": 0.4, "runtime": "onnxruntime"},
        "hardware": {"accuracy": 0.82, "latency_ms": 1.5, "latency_budget": {"runtime": "onnxruntime",
                                                                            "latency_ms": 0.3, "budget_ms": 0.35}},
    }  # fmt: skip
    points = {p["key"]: p for p in latency_points({"models": models})}
    assert points["onnx_int8"]["runtime"] == "onnxruntime" and points["int8"]["runtime"] == "torch"
    assert points["hardware"]["runtime"] == "onnxruntime" and points["hardware"]["latency"] == 0.3
    assert points["raw_student"]["label"] == "raw student (no distillation)"


def test_accuracy_vs_latency_draws_one_marker_per_runtime_and_the_onnx_fp32_point(tmp_path, drawn_figures):
    from zoo.cards import plot_accuracy_vs_latency

    models = {
        **MODELS,
        "teacher": {**MODELS["teacher"], "latency_ms": 60.0},  # 60 / 0.4: a log axis
        "onnx_fp32": {"accuracy": 0.84, "latency_ms": 0.9, "runtime": "onnxruntime"},
        "onnx_int8": {"accuracy": 0.83, "latency_ms": 0.4, "runtime": "onnxruntime"},
    }
    plot_accuracy_vs_latency({"models": models}, tmp_path / "a.png")
    ax = drawn_figures[-1].axes[0]
    handles = dict(zip([t.get_text() for t in ax.get_legend().get_texts()], ax.get_legend().legend_handles))
    markers = {label: h.get_marker() for label, h in handles.items() if label}
    assert markers["torch eager"] == "o" and markers["ONNX Runtime"] == "s"
    assert {markers[k] for k in ("teacher", "distilled student", "pruned + KD recovery", "int8")} == {"o"}
    assert markers["ONNX fp32"] == markers["ONNX int8"] == "s"
    drawn = {tuple(c.get_offsets()[0]) for c in ax.collections}
    assert (0.9, 84.0) in drawn and len(drawn) == len(models)  # every model a point of its own
    # labels: in the legend, never on the axes; log-axis ticks as plain numbers, minor ticks unlabelled
    assert [t.get_text()[:19] for t in ax.texts] == ["int8 in torch eager"]  # the note under the axes only
    assert ax.get_xscale() == "log" and not [t for t in ax.get_xticklabels(minor=True) if t.get_text()]
    shown = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert shown and all(re.fullmatch(r"[0-9.]+", t) for t in shown)

    # an export without --data measured its latency only: a line at that latency, no made-up accuracy
    models["onnx_fp32"] = {"accuracy": None, "latency_ms": 0.9, "runtime": "onnxruntime"}
    plot_accuracy_vs_latency({"models": models}, tmp_path / "b.png")
    ax = drawn_figures[-1].axes[0]
    assert [list(ln.get_xdata()) for ln in ax.get_lines()] == [[0.9, 0.9]]
    assert "ONNX fp32 (accuracy not measured)" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(ax.collections) == len(models) - 1
