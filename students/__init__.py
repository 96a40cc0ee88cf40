"""Student model families. Importing this package registers them with ``zoo.registry``.

``base`` writes the contract every family follows (``Student``) and loads any saved student (``load_student``).
"""

from zoo.students import variants  # noqa: F401  (registers hybrid_* sizes)
from zoo.students.base import PruneGroup, PruneSlice, Student, load_student
from zoo.students.hybrid import HybridConfig, HybridStudent, build_student

__all__ = ["HybridConfig", "HybridStudent", "PruneGroup", "PruneSlice", "Student", "build_student", "load_student"]
