"""Teachers: frozen adapters over transformers, timm and TorchScript models, ensembles, and the output cache.

from zoo.teachers import load_teacher, TeacherSet, TeacherCache
text = load_teacher("path/or/hub-id", modality="text")
out = text(samples)                      # TeacherOutput(logits, features, embeds, mask)
cache = TeacherCache("cache_dir", text, dataset, features=["layer.4"]).precompute()
cached = cache.as_teacher()              # same interface, looks up sample ids
"""

from zoo.teachers.base import Teacher, TeacherOutput
from zoo.teachers.cache import (
    CachedTeacher,
    TeacherCache,
    augmented_view,
    bucket_log_probs,
    compress_logits,
    expand_logits,
    fingerprint_dataset,
    kd_target,
    shared_cache_dir,
)
from zoo.teachers.crossfit import CrossFitTeacher, assign_folds
from zoo.teachers.ensemble import TeacherSet
from zoo.teachers.hf import CLIPTeacher, HFTeacher
from zoo.teachers.load import TeacherOfflineError, load_crossfit, load_teacher
from zoo.teachers.timm_teacher import TimmTeacher
from zoo.teachers.torchscript import SileroVADTeacher, TorchScriptTeacher

__all__ = [
    "CLIPTeacher",
    "CachedTeacher",
    "CrossFitTeacher",
    "assign_folds",
    "load_crossfit",
    "HFTeacher",
    "SileroVADTeacher",
    "Teacher",
    "TeacherCache",
    "TeacherOfflineError",
    "TeacherOutput",
    "TeacherSet",
    "TimmTeacher",
    "TorchScriptTeacher",
    "shared_cache_dir",
    "augmented_view",
    "bucket_log_probs",
    "compress_logits",
    "expand_logits",
    "fingerprint_dataset",
    "kd_target",
    "load_teacher",
]
