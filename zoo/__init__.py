"""distill-zoo: compress Hugging Face teachers for text, image and audio into small hybrid students."""

from zoo import auto
from zoo.registry import create_student, list_models, register_model

__version__ = "0.1.0"

__all__ = ["create_student", "list_models", "register_model", "load", "__version__"]

auto.install()  # transformers' AutoConfig / AutoModel load student folders (registered when transformers loads)


def load(name_or_path: str, **kwargs):
    """Load a student from a local folder, a hub id or a name from the zoo's catalogue (``zoo list``).

    ``subfolder="int8"`` (or ``"org/name/int8"``) loads another student of a run (``raw_student``, ``pruned``,
    ``int8``, ``hardware``); ``revision``, ``cache_dir`` and ``token`` are passed to huggingface_hub.

    Hub files go through the HF cache; offline, a hub id or catalogue name fails with a message saying how to
    pass a local folder instead. The student's family is the one registered for config.json's ``architecture``.
    """
    from zoo.students import load_student  # the students import torch; `import zoo` (and `zoo --help`) does not

    return load_student(name_or_path, **kwargs)
