"""Deployment runtimes beside ONNX Runtime: OpenVINO and Apache TVM, both compiled from our ONNX graph, and one
session type that runs an artifact of any of the three.

Each runtime takes the graph ``zoo.compress.export.export_onnx`` writes (float, or int8 as a QDQ graph):

- **OpenVINO** (``pip install 'distill-zoo[openvino]'``): ``ov.convert_model`` on the ONNX file, saved as IR
  (``openvino/model.xml`` + ``model.bin``, float weights kept in fp32). OpenVINO's low-precision transformations
  turn the QDQ pairs of an int8 graph into int8 kernels (``FullyConnected`` / ``Convolution`` in u8 x i8), as
  ONNX Runtime does. The IR keeps the dynamic batch axis; the session compiles it for each batch size it meets
  with a static shape (2-3x faster than OpenVINO's dynamic-shape kernels on these students).
- **TVM** (``pip install 'distill-zoo[tvm]'``): ``tvm.relax.frontend.onnx.from_onnx`` on the graph with a static
  batch, built by ``tvm.compile`` for the local CPU (``llvm`` with ``mcpu`` the host's CPU name: TVM 0.27 refuses
  ``-mcpu=native`` with its LLVM 22 and would fall back to ``generic``, without AVX2/FMA), one ``tvm/batch<N>.so``
  per batch size. TVM's ONNX frontend cannot do arithmetic on shapes, so the graph's shape computations are first
  folded by ONNX Runtime's basic optimisations with the batch fixed. The frontend imports QuantizeLinear /
  DequantizeLinear as float rounding and dequantization: an int8 student runs in TVM with float kernels and int8
  numerics (its logits match torch's to float precision), not faster than the float one. Untuned, TVM uses its
  default schedules; ``tuning_trials`` runs MetaSchedule (minutes on one core: the benchmark only, never tests).

Every artifact folder holds ``export.json``: the runtime, its version, batch sizes and target, and the ONNX graph's
metadata (labels, modalities, inputs and outputs, preprocessing), so :func:`session` needs nothing else; the
student folder it sits in (``config.json``, tokenizer) gives the preprocessing for raw samples.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from zoo.io import atomic_write_json, staged_folder

RUNTIMES = ("onnxruntime", "openvino", "tvm")
# what hardware_adapt measures a latency budget on (torch eager, torch.compile, or a compiled runtime above)
HARDWARE_RUNTIMES = ("torch", "torch_compile", *RUNTIMES)
# pip extra of each optional runtime, and the module it installs
EXTRAS = {"openvino": "openvino", "tvm": "tvm"}
ARTIFACTS = {"openvino": "openvino", "tvm": "tvm"}  # the folder each one's export writes, inside the student folder
META_NAME = "export.json"
OPENVINO_XML = "model.xml"


def installed(runtime: str) -> bool:
    """Whether ``runtime``'s Python package can be imported (without importing it)."""
    return runtime in RUNTIMES and importlib.util.find_spec(EXTRAS.get(runtime, runtime)) is not None


def require(runtime: str):
    """Import and return ``runtime``'s module; a runtime that is not installed is an error saying how to add it."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime {runtime!r}: choose one of {list(RUNTIMES)}.")
    if not installed(runtime):
        raise ImportError(
            f"runtime {runtime!r} is not installed: pip install 'distill-zoo[{EXTRAS[runtime]}]' (or pip install "
            f"{'apache-tvm' if runtime == 'tvm' else runtime})."
        )
    if runtime == "tvm":
        os.environ.setdefault("TVM_NUM_THREADS", "1")  # read once, when TVM's thread pool starts
    return importlib.import_module(EXTRAS.get(runtime, runtime))


def _onnx_meta(onnx_path: str | os.PathLike) -> dict:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def _write_meta(folder: Path, runtime: str, version: str, onnx_path, **extra) -> None:
    meta = {"runtime": runtime, "version": version, **extra, "onnx_metadata": _onnx_meta(onnx_path)}
    atomic_write_json(folder / META_NAME, meta)


# ---------------------------------------------------------------------------------------------------- OpenVINO
def _ov_core(threads: int = 1):
    ov = require("openvino")
    core = ov.Core()
    core.set_property("CPU", {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"})
    return core


def convert_openvino(onnx_path: str | os.PathLike):
    """The ONNX graph as an OpenVINO model; an operator OpenVINO cannot convert is an error naming it."""
    ov = require("openvino")
    try:
        return ov.convert_model(str(onnx_path))
    except Exception as e:  # OpConversionFailure and friends: name the runtime and the file
        raise RuntimeError(f"OpenVINO cannot convert {onnx_path}: {e}") from e


def export_openvino(onnx_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write the ONNX graph as OpenVINO IR into ``out_dir`` (``model.xml``, ``model.bin``, ``export.json``),
    replacing the folder whole (``zoo.io.staged_folder``); returns ``out_dir``."""
    ov = require("openvino")
    model = convert_openvino(onnx_path)
    out_dir = Path(out_dir)
    with staged_folder(out_dir, overwrite=True) as stage:
        ov.save_model(model, str(stage / OPENVINO_XML), compress_to_fp16=False)
        _write_meta(stage, "openvino", ov.__version__, onnx_path, device="CPU")
    return out_dir


def _static_batch(model, batch_size: int):
    """A copy of an OpenVINO model with the batch axis of every input fixed to ``batch_size``."""
    model = model.clone()
    model.reshape({i.get_any_name(): [batch_size, *list(i.get_partial_shape())[1:]] for i in model.inputs})
    return model


def _openvino_runner(xml: Path, threads: int = 1) -> Callable:
    core = _ov_core(threads)
    model = core.read_model(str(xml))
    requests: dict[int, object] = {}  # batch size -> infer request of the model compiled for it

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        n = len(next(iter(feeds.values())))
        if n not in requests:
            requests[n] = core.compile_model(_static_batch(model, n), "CPU").create_infer_request()
        result = requests[n].infer(feeds)
        return [np.asarray(result[o]) for o in requests[n].model_outputs]

    return run


# --------------------------------------------------------------------------------------------------------- TVM
def tvm_target():
    """The local CPU as a TVM target: ``llvm`` with the host's CPU name (``znver2``, ``skylake-avx512``, ...)."""
    tvm = require("tvm")
    from tvm.target import codegen

    return tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": 1})


def static_onnx(onnx_path: str | os.PathLike, batch_size: int):
    """The ONNX graph with its batch axis fixed and its shape arithmetic folded to constants (ONNX Runtime's basic
    optimisations: constant folding, standard ops only), which TVM's ONNX frontend needs."""
    import tempfile

    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    for value in [*model.graph.input, *model.graph.output]:
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = batch_size
    with tempfile.TemporaryDirectory(prefix="zoo-static-") as tmp:
        onnx.save(model, os.path.join(tmp, "static.onnx"))
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = os.path.join(tmp, "folded.onnx")
        so.log_severity_level = 3
        ort.InferenceSession(os.path.join(tmp, "static.onnx"), so, providers=["CPUExecutionProvider"])
        return onnx.load(so.optimized_model_filepath)


def unsupported_tvm_ops(model) -> list[str]:
    """The ONNX operator types of ``model`` (a ModelProto) that TVM's relax ONNX frontend has no converter for."""
    require("tvm")
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    known = _get_convert_map()
    return sorted({n.op_type for n in model.graph.node} - set(known))


def import_tvm(onnx_path: str | os.PathLike, batch_size: int):
    """The ONNX graph at ``batch_size`` as a relax IRModule; operators TVM lacks are an error naming them."""
    require("tvm")
    from tvm.relax.frontend.onnx import from_onnx

    model = static_onnx(onnx_path, batch_size)
    missing = unsupported_tvm_ops(model)
    if missing:
        raise RuntimeError(f"TVM's ONNX frontend has no converter for {missing} (in {onnx_path}).")
    try:
        return from_onnx(model, keep_params_in_input=False)
    except Exception as e:  # an op converted with attributes the frontend does not support, and the like
        raise RuntimeError(f"TVM cannot import {onnx_path}: {e}") from e


def compile_tvm(
    onnx_path: str | os.PathLike, batch_size: int = 1, tuning_trials: int = 0, work_dir: str | os.PathLike | None = None
):
    """Build the ONNX graph at ``batch_size`` for the local CPU; returns the TVM executable.

    ``tuning_trials`` > 0 tunes the kernels with MetaSchedule (``static_shape_tuning`` pipeline, weights prepacked
    for the CPU) and logs the trials to ``work_dir``: minutes of CPU on one core, so the benchmark's, not the tests'.
    """
    tvm = require("tvm")
    from tvm import relax

    mod = import_tvm(onnx_path, batch_size)
    target = tvm_target()
    if tuning_trials > 0:
        if work_dir is None:
            raise ValueError("compile_tvm with tuning_trials needs a work_dir for the tuning records.")
        pipeline = relax.get_pipeline(
            "static_shape_tuning", total_trials=tuning_trials, target=target, work_dir=str(work_dir),
            cpu_weight_prepack=True,
        )  # fmt: skip
        with target:
            mod = pipeline(mod)
        return tvm.compile(mod, target=target, relax_pipeline=None)
    return tvm.compile(mod, target=target)


def export_tvm(
    onnx_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    batch_sizes: tuple[int, ...] = (1,),
    tuning_trials: int = 0,
) -> Path:
    """Compile the ONNX graph for the local CPU at each of ``batch_sizes`` into ``out_dir`` (``batch<N>.so`` each,
    ``export.json``), replacing the folder whole; returns ``out_dir``. Needs a C compiler to link the libraries."""
    tvm = require("tvm")
    if not any(shutil.which(c) for c in ("gcc", "g++", "clang", "cc")):
        raise RuntimeError("TVM links its compiled libraries with a C compiler: install gcc (or clang) first.")
    sizes = sorted({int(b) for b in batch_sizes})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"TVM batch sizes {batch_sizes!r}: give one or more positive sizes.")
    out_dir = Path(out_dir)
    with staged_folder(out_dir, overwrite=True) as stage:
        for n in sizes:
            work = stage / f"tuning-batch{n}" if tuning_trials else None
            executable = compile_tvm(onnx_path, n, tuning_trials, work)
            executable.export_library(str(stage / f"batch{n}.so"))  # the staged folder makes it atomic
            if work is not None:
                shutil.rmtree(work, ignore_errors=True)
        _write_meta(
            stage, "tvm", tvm.__version__, onnx_path, batch_sizes=sizes, target=str(tvm_target()),
            tuning_trials=tuning_trials,
        )  # fmt: skip
    return out_dir


def _tvm_vm(executable):
    tvm = require("tvm")
    from tvm import relax

    return relax.VirtualMachine(executable, tvm.cpu())


def _tvm_call(vm, names: list[str]) -> Callable:
    tvm = require("tvm")

    def call(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(feeds[k])) for k in names])
        outs = [out] if hasattr(out, "numpy") else list(out)  # one task: a tensor; several: a tuple of them
        return [o.numpy() for o in outs]

    return call


def _tvm_runner(folder: Path, names: list[str], sizes: list[int]) -> Callable:
    """Runs a batch of any size on the libraries compiled for ``sizes``: in chunks of the largest size that fits,
    a last chunk smaller than every size padded (with copies of its last row) and cut back."""
    tvm = require("tvm")
    calls = {n: _tvm_call(_tvm_vm(tvm.runtime.load_module(str(folder / f"batch{n}.so"))), names) for n in sizes}

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        total, start, parts = len(next(iter(feeds.values()))), 0, []
        while start < total:
            left = total - start
            size = max((n for n in sizes if n <= left), default=min(sizes))
            chunk = {k: v[start : start + size] for k, v in feeds.items()}
            if len(next(iter(chunk.values()))) < size:
                chunk = {k: np.concatenate([v, np.repeat(v[-1:], size - len(v), 0)]) for k, v in chunk.items()}
            parts.append([o[: min(size, left)] for o in calls[size](chunk)])
            start += size
        return [np.concatenate(p) for p in zip(*parts)]

    return run


# ----------------------------------------------------------------------------------------------------- session
class Session:
    """A compiled student on one runtime, with the labels and preprocessing of the folder it was exported from.

    ``run(batch)`` -> logits of every task (numpy, in ``output_names`` order) for a flat batch (what
    ``zoo.load(folder).preprocess(samples)`` returns); ``logits(batch)`` -> the first task's as a torch tensor;
    ``predict(samples)`` -> label names of raw samples, through the student folder's own preprocessing.
    """

    def __init__(self, runtime: str, path: Path, meta: dict, runner: Callable, student_folder: Path | None):
        self.runtime, self.path, self.meta, self._run = runtime, path, meta, runner
        self.student_folder = student_folder
        self.input_names: list[str] = json.loads(meta.get("input_names", "[]"))
        self.output_names: list[str] = json.loads(meta.get("output_names", "[]"))
        self.id2label: dict[str, str] = json.loads(meta.get("id2label", "{}"))
        self.preprocessing: dict = json.loads(meta.get("preprocessing", "{}"))
        self._preprocess = None

    def feeds(self, batch: dict) -> dict[str, np.ndarray]:
        """The runtime's inputs from a flat batch (torch tensors or arrays); a missing input is an error naming it."""
        missing = [n for n in self.input_names if n not in batch]
        if missing:
            raise KeyError(f"{self.path} needs inputs {missing}; the batch has {sorted(batch)}.")
        out = {}
        for n in self.input_names:
            v = batch[n]
            out[n] = v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v)
        return out

    def run(self, batch: dict) -> list[np.ndarray]:
        return self._run(self.feeds(batch))

    def logits(self, batch: dict) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.run(batch)[0]))

    def preprocess(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        """Raw samples -> the flat batch, with the preprocessing of the student folder (config.json, tokenizer)."""
        if self._preprocess is None:
            if self.student_folder is None:
                raise FileNotFoundError(
                    f"{self.path} is not inside a student folder (config.json beside it): preprocess raw samples "
                    "with zoo.load(folder).preprocess and call run() on the batch."
                )
            from zoo.students import load_student

            self._preprocess = load_student(self.student_folder).preprocess
        return self._preprocess(samples)

    def predict(self, samples: list[dict]) -> list[str]:
        """The label name (``id2label``; the class index as a string when unnamed) of each raw sample."""
        ids = self.logits(self.preprocess(samples)).argmax(-1).tolist()
        return [self.id2label.get(str(i), str(i)) for i in ids]


def _student_folder(path: Path) -> Path | None:
    for folder in (path.parent, path.parent.parent):
        if (folder / "config.json").exists():
            return folder
    return None


def session(path: str | os.PathLike, threads: int = 1) -> Session:
    """Open an exported student on its runtime: a ``.onnx`` file (ONNX Runtime), an ``openvino/`` folder or its
    ``model.xml`` (OpenVINO), a ``tvm/`` folder (TVM); a student folder opens the first of those it holds."""
    from zoo.compress.export import ONNX_NAME, onnx_session

    path = Path(path)
    if path.is_dir() and (path / "config.json").exists():  # a student folder: its first exported artifact
        found = [p for p in (path / ONNX_NAME, path / ARTIFACTS["openvino"], path / ARTIFACTS["tvm"]) if p.exists()]
        if not found:
            raise FileNotFoundError(f"{path} holds no exported model: run `zoo export {path} --onnx` (or --openvino, "
                                    "--tvm) first.")  # fmt: skip
        path = found[0]
    if path.suffix == ".xml":
        path = path.parent
    if path.suffix == ".onnx":
        ort_session = onnx_session(path, threads)
        meta = ort_session.get_modelmeta().custom_metadata_map
        return Session("onnxruntime", path, meta, lambda feeds: ort_session.run(None, feeds), path.parent)
    if not (path / META_NAME).exists():
        raise FileNotFoundError(
            f"{path} is not an exported model (no {META_NAME}): export it with `zoo export DIR --openvino` or --tvm."
        )
    info = json.loads((path / META_NAME).read_text())
    runtime, meta = info.get("runtime"), info.get("onnx_metadata") or {}
    if runtime == "openvino":
        runner = _openvino_runner(path / OPENVINO_XML, threads)
    elif runtime == "tvm":
        runner = _tvm_runner(path, json.loads(meta["input_names"]), info["batch_sizes"])
    else:
        raise ValueError(f"{path / META_NAME}: runtime {runtime!r} is not one of {list(RUNTIMES)}.")
    return Session(runtime, path, meta, runner, _student_folder(path))


def check_installed(runtime: str) -> None:
    """Raise when ``hardware_adapt`` does not know ``runtime`` (ValueError) or its package is missing (ImportError)."""
    if runtime not in HARDWARE_RUNTIMES:
        raise ValueError(f"runtime {runtime!r}: choose one of {list(HARDWARE_RUNTIMES)}.")
    if runtime in EXTRAS:
        require(runtime)


def runtime_problem(runtime: str) -> str | None:
    """What keeps ``runtime`` from measuring here (an unknown name, a package not installed), or None."""
    try:
        check_installed(runtime)
    except (ValueError, ImportError) as e:
        return str(e)
    return None
