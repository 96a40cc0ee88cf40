"""The student a ``zoo distill`` run starts from: built fresh with the run's tokenizer, started from the text
teacher's token embeddings (``student_init: teacher``), or a pretrained zoo student with a fresh head for the labels
(``student_init: NAME``; ``auto`` picks the shipped one that fits, ``zoo.catalogue.pretrained_for``). The raw-student
baseline asks for the same student without the inherited weights.

``Run`` (``zoo.train.run``) takes these methods from ``RunStudent``; they read the run's recipe, data, modalities,
teachers and log.
"""

from __future__ import annotations

import copy

from zoo.registry import create_student
from zoo.train.tokens import inherit_token_embeddings, student_tokenizer, tokenizer_kind


class RunStudent:
    """How a run builds its student (mixed into ``zoo.train.run.Run``)."""

    def new_student(self, inherit: bool = True):
        """A freshly initialised student (seeded), with the run's tokenizer; ``student_init: teacher`` (and
        ``inherit``) starts its token embeddings from the text teacher's; ``student_init: <pretrained student>``
        (and ``inherit``) is that student with a fresh head for the labels, else (the raw baseline) a blank copy."""
        r = self.recipe
        init = self.student_init()
        if init not in ("random", "teacher"):
            return self._pretrained_student(init, inherit)
        overrides = copy.deepcopy(r.student_overrides)
        id2label = {str(k): v for k, v in self.data.id2label.items()}
        kwargs, kept = {}, None
        if "text" in self.modalities and tokenizer_kind(r.tokenizer, self.teacher_paths) != "train":
            # a given tokenizer sizes the embedding (as create_student does); a smaller vocab_size cannot hold it
            tokenizer, kept = student_tokenizer(self, 0)
            kwargs["tokenizer"] = tokenizer
            text = dict(overrides.get("text") or {})
            if text.pop("vocab_size", None) is not None:
                overrides["text"] = text
        student = create_student(
            r.student, modalities=self.modalities, num_classes=self.num_classes, id2label=id2label, **overrides,
            **kwargs,
        )  # fmt: skip
        if "text" in student.config.modalities and "tokenizer" not in kwargs:
            student.set_tokenizer(student_tokenizer(self, student.config.text.vocab_size)[0])
        elif "text" in student.config.modalities and inherit and init == "teacher":
            inherit_token_embeddings(student, self.teachers.get("text"), kept, self.log)
        return student

    def student_init(self) -> str:
        """The recipe's ``student_init``; ``auto``: the zoo's shipped pretrained student for this architecture and
        exactly these modalities (``zoo.catalogue.pretrained_for``) when there is one, else ``teacher``."""
        r = self.recipe
        if r.student_init != "auto":
            return r.student_init
        if not hasattr(self, "_auto_init"):
            from zoo.catalogue import pretrained_for

            name = pretrained_for(r.student, self.modalities)
            self._auto_init = name or "teacher"
            self.log(f"student_init: auto -> {self._auto_init}" + ("" if name else " (no pretrained student fits)"))
        return self._auto_init

    def _pretrained_student(self, name: str, inherit: bool):
        """``student_init: NAME``: the pretrained student (``zoo.load``: catalogue name, hub id or folder) with a
        fresh ``label`` head sized to the data (its pretraining head dropped), its own tokenizer; ``inherit=False``:
        the same architecture, config and tokenizer, freshly initialised (the raw-student baseline)."""
        import zoo
        from zoo.finetune import replace_heads_for_labels

        r = self.recipe
        pre = zoo.load(name)
        missing = [m for m in self.modalities if m not in pre.config.modalities]
        if missing:
            raise ValueError(
                f"student_init={name}: that student takes {pre.config.modalities}, the data also carries "
                f"{missing}; use student_init=teacher or a pretrained student for every modality."
            )
        if pre.config.quantization:
            raise ValueError(f"student_init={name} is an int8 student; start from its float version.")
        arch = getattr(pre.config, "architecture", None)
        if inherit and arch and arch != r.student:
            self.log(f"student_init: {name} is a {arch}; the run's student is that, not {r.student}")
        if inherit and r.student_overrides:
            self.log(f"student_init: {name} keeps its own config; student_overrides are not applied")
        id2label = {str(k): str(v) for k, v in self.data.id2label.items()}
        replace_heads_for_labels(pre, id2label)
        if inherit:
            self.log(f"student_init: the weights and tokenizer of {name} (a fresh head for the labels)")
            return pre
        return pre.blank_copy()
