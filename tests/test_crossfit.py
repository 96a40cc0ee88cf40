"""Cross-fitted teachers: each train row is answered by the fold teacher that never saw it."""

import json

import pytest
import torch
from test_teachers import save_bert_classifier, text_samples

from zoo.teachers import CrossFitTeacher, TeacherCache, assign_folds, load_teacher
from zoo.teachers.crossfit import save_assignment


@pytest.fixture(scope="module")
def crossfit_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crossfit")
    for k in range(2):
        save_bert_classifier(folder / f"fold-{k}", seed=k)  # different weights per fold
    save_assignment(folder, {"a": 0, "c": 1}, folds=2)
    return folder


def test_assign_folds_is_balanced_and_seeded():
    ids = [f"r{i}" for i in range(10)]
    a = assign_folds(ids, 3, seed=0)
    assert a == assign_folds(ids, 3, seed=0) and a != assign_folds(ids, 3, seed=1)
    assert sorted(list(a.values()).count(k) for k in range(3)) == [3, 3, 4]
    with pytest.raises(ValueError, match="at least 2 folds"):
        assign_folds(ids, 1, seed=0)


def test_rows_are_answered_by_the_teacher_that_did_not_see_them(crossfit_dir):
    teacher = load_teacher(crossfit_dir, modality="text")
    assert isinstance(teacher, CrossFitTeacher) and teacher.num_classes == 3
    folds = [load_teacher(crossfit_dir / f"fold-{k}", modality="text") for k in range(2)]
    samples = text_samples() + [{"id": "new", "text": "birds sing"}]
    out = teacher(samples)
    per_fold = [f(samples).logits for f in folds]
    assert out.mask.tolist() == [True, False, True, True]
    torch.testing.assert_close(out.logits[0], per_fold[0][0])  # "a" is in fold 0: teacher 0 never saw it
    torch.testing.assert_close(out.logits[2], per_fold[1][2])  # "c" is in fold 1
    mean = torch.stack([p[3].softmax(-1) for p in per_fold]).mean(0)
    torch.testing.assert_close(out.logits[3].softmax(-1), mean)  # unseen id: the folds' mean probability
    assert (out.logits[1] == 0).all()
    with pytest.raises(ValueError, match="logits only"):
        teacher(samples, layers=["layer.1"])


def test_crossfit_teacher_caches_like_any_teacher(crossfit_dir, tmp_path):
    teacher = load_teacher(crossfit_dir, modality="text")
    data = [{"id": "a", "text": "the cat sat"}, {"id": "c", "text": "a dog ran"}, {"id": "z", "text": "the fox"}]
    cache = TeacherCache(tmp_path, teacher, data, dataset_fingerprint="d1")
    cache.precompute(progress=False)
    torch.testing.assert_close(cache.lookup(["a", "c", "z"]).logits, teacher(data).logits)


def test_bad_crossfit_folders(crossfit_dir, tmp_path):
    (tmp_path / "crossfit.json").write_text(json.dumps({"folds": 2, "assignment": {"a": 0}}))
    with pytest.raises(FileNotFoundError, match=r"missing \['fold-0', 'fold-1'\]"):
        load_teacher(tmp_path, modality="text")
    (tmp_path / "crossfit.json").write_text("{}")
    with pytest.raises(ValueError, match="not a valid cross-fit description"):
        load_teacher(tmp_path, modality="text")
    folds = [load_teacher(crossfit_dir / f"fold-{k}", modality="text") for k in range(2)]
    with pytest.raises(ValueError, match="names folds"):
        CrossFitTeacher(folds, {"a": 5})


def test_label_fraction_hides_labels_from_the_students():
    import zoo
    from zoo.recipe import DataSettings
    from zoo.train.rows import Rows

    student = zoo.create_student("hybrid_test", modalities=["image"], num_classes=3)
    split = [{"id": str(i), "image": torch.rand(3, 16, 16), "label": i % 3} for i in range(20)]
    rows = Rows(split, student.preprocessors())
    assert rows.hide_labels(0.3, seed=0) == 6
    labels = [int(rows[i]["labels"]) for i in range(20)]
    assert sum(y != -100 for y in labels) == 6
    assert all(y == split[i]["label"] for i, y in enumerate(labels) if y != -100)
    again = Rows(split, student.preprocessors())
    again.hide_labels(0.3, seed=0)
    assert again.unlabeled == rows.unlabeled  # seeded
    with pytest.raises(ValueError, match="label_fraction"):
        DataSettings(label_fraction=0.0)


def test_tokenizer_folder_of_a_crossfit_teacher_is_fold_0(tmp_path):
    from zoo.teachers.crossfit import CROSSFIT_FILE, tokenizer_folder

    assert tokenizer_folder(tmp_path) == tmp_path  # a plain teacher folder holds its own tokenizer
    (tmp_path / CROSSFIT_FILE).write_text("{}")
    assert tokenizer_folder(tmp_path) == tmp_path / "fold-0"
