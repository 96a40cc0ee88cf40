"""Training curves (``zoo.plots``): what the figure shows, read from its matplotlib objects."""

from zoo.plots import BASELINE_LABEL, phase_label, plot_training_curves


def _train(phase, step, global_step, **losses):
    return {"event": "train", "phase": phase, "step": step, "global_step": global_step, "temperature": 2.0, **losses}


RECORDS = [
    _train("raw_student", 10, 10, ce=2.0, loss=2.0, temperature=1.0),
    _train("raw_student", 20, 20, ce=1.0, loss=1.0, temperature=1.0),
    {"event": "eval", "phase": "raw_student", "step": 20, "global_step": 20, "val_accuracy": 0.5},
    _train("soft_distill", 10, 30, ce=1.5, kd=8.0, loss=6.0),
    _train("soft_distill", 20, 40, ce=1.2, kd=6.0, loss=4.5),
    _train("mixed_distill", 5, 45, ce=1.0, kd=0.6, feature=-0.0, distill=0.6, loss=0.9, multiplier=2.0),
    _train("prune-a0", 5, 50, ce=0.9, kd=0.5, reference=0.1, loss=0.3),
    {"event": "eval", "phase": "prune-a0", "step": 5, "global_step": 50, "val_accuracy": 0.6},
    {"event": "rollback", "phase": "prune", "global_step": 50, "reason": "accuracy guard", "drop": 0.02},
    _train("prune-a1", 5, 55, ce=0.8, kd=0.4, reference=0.05, loss=0.25),
    _train("quant_finetune-a0", 5, 60, quant=0.001, loss=0.001),
]


def test_training_curves_draw_each_kind_of_loss_apart_and_the_baseline_apart_from_the_stages(tmp_path, drawn_figures):
    assert plot_training_curves(RECORDS, tmp_path / "curves.png").stat().st_size > 0
    (fig,) = drawn_figures
    axes = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    # one panel per kind of loss (an all-zero term, like the unweighted feature alignment, gets none)
    assert list(axes) == [
        "cross-entropy on the labels",
        "KD to the teachers (KL x T²)",
        "KD to the stage's starting student",
        "total objective (each stage's weighted sum)",
        "validation accuracy (%)",
        "temperature T and KD multiplier",
    ]
    assert axes["KD to the teachers (KL x T²)"].get_yscale() == "log"  # 0.4 .. 8: more than a decade

    def lines(title):
        return [ln for ln in axes[title].get_lines() if len(ln.get_xdata())]

    # the baseline: grey and dashed, against its own steps (10, 20), where the stages start at the first stage
    ce = lines("cross-entropy on the labels")
    grey = [ln for ln in ce if ln.get_color() == "grey"]
    assert len(grey) == 1 and grey[0].get_linestyle() == "--" and list(grey[0].get_xdata()) == [10, 20]
    first = next(ln for ln in ce if ln.get_color() != "grey")
    assert list(first.get_xdata()) == [10, 20] and list(first.get_ydata()) == [1.5, 1.2]  # soft_distill from 0
    assert all(ln.get_color() == "grey" or ln.get_linestyle() == "-" for ln in ce)  # no stage drawn like it
    for title in ("KD to the teachers (KL x T²)", "total objective (each stage's weighted sum)"):
        assert not [ln for ln in lines(title) if ln.get_color() == "grey"]  # no teacher, no objective of its own
    assert len(lines("KD to the stage's starting student")) == 3  # prune twice, quant_finetune ("quant")

    # one legend for the stages, baseline last and named as such, no internal attempt suffixes anywhere
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "soft_distill", "mixed_distill", "prune (rolled back)", "prune (attempt 2)", "quant_finetune", BASELINE_LABEL
    ]  # fmt: skip
    texts = [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))]
    assert not [t for t in texts if "-a0" in t or "-a1" in t]


def test_training_curves_of_a_run_without_train_records_are_not_drawn(tmp_path, drawn_figures):
    assert plot_training_curves([{"event": "eval", "phase": "x", "val_accuracy": 0.5}], tmp_path / "c.png") is None
    assert not drawn_figures and not (tmp_path / "c.png").exists()


def test_phase_label_drops_the_attempt_suffix():
    assert phase_label("prune-a0") == "prune" and phase_label("prune-a1") == "prune (attempt 2)"
    assert phase_label("prune-a0", rolled_back=True) == "prune (rolled back)"
    assert phase_label("raw_student") == BASELINE_LABEL and phase_label("soft_distill") == "soft_distill"
