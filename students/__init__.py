"""Student model families. Importing this package registers them with ``zoo.registry``."""

from zoo.students import variants  # noqa: F401  (registers hybrid_* sizes)
from zoo.students.hybrid import HybridConfig, HybridStudent, build_student  # noqa: F401

__all__ = ["HybridConfig", "HybridStudent", "build_student"]
