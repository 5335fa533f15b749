"""A model directory as an MLflow ``pyfunc`` model: audio paths and transcripts in, embeddings
(and a fine-tuned model's task outputs) out.

    import mlflow, pandas as pd
    model = mlflow.pyfunc.load_model("models:/ctal-emotion/1")   # or runs:/<run id>/pyfunc
    out = model.predict(pd.DataFrame({"audio": ["a.wav"], "text": ["hello there"]}))

The logged model's artifacts are the export directory itself (``model/``: weights,
config.json, tokenizer.json, feature_config.json) and ``input_example.wav``; its code is
this package (``code/ctal_ds``), so loading needs neither an installed ctal-ds nor
DeepSpeed. ``predict`` takes a DataFrame with columns ``audio`` (a file path; a relative
path not found from the working directory is looked up among the model's artifacts, so
the logged input example runs as it is) and ``text`` (optional; empty or missing: no
transcript) and returns one row per input with ``audio_pooled`` and ``text_pooled`` and,
for a fine-tuned export, ``embedding`` and ``probs``, ``label``, ``label_name`` (when the
export names its classes), ``speaker_embedding`` (speaker) or ``score`` (regression):
vectors as lists of floats. The inputs are read exactly as ``model.embed`` reads them.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

try:
    from mlflow.pyfunc import PythonModel
except ImportError:  # mlflow is a requirement; a bare environment still imports ctal_ds.model
    PythonModel = object  # type: ignore[assignment,misc]

MODEL_ARTIFACT = "model"
EXAMPLE_ARTIFACT = "input_example"
EXAMPLE_FILE = "input_example.wav"
EXAMPLE_TEXT = "hello there"
DEFAULT_NAME = "pyfunc"
DEFAULT_BATCH_SIZE = 8
VECTOR_OUTPUTS = ("audio_pooled", "text_pooled", "embedding", "probs", "speaker_embedding")
# What the pyfunc environment needs: the imports of ctal_ds.model and of feature extraction.
REQUIREMENTS = ("torch", "numpy", "pandas", "soundfile", "soxr", "librosa", "tokenizers", "safetensors",
                "threadpoolctl", "mlflow")  # fmt: skip


class CTALPyfunc(PythonModel):
    """``mlflow.pyfunc.PythonModel`` over a ``save_pretrained`` directory."""

    def __init__(self, batch_size: int = DEFAULT_BATCH_SIZE, device: str | None = None) -> None:
        self.batch_size = batch_size
        self.device = device
        self.model: Any = None
        self.fields: list[str] = []
        self.artifact_dir: Path | None = None

    def load_context(self, context) -> None:  # noqa: ANN001 - MLflow's PythonModelContext
        import torch

        from ctal_ds.model import load_pretrained
        from ctal_ds.model.embed_files import available_fields

        directory = Path(context.artifacts[MODEL_ARTIFACT])
        self.model = load_pretrained(directory)
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(device).eval()
        self.fields = [f for f in available_fields(self.model) if f != "logits"]
        example = context.artifacts.get(EXAMPLE_ARTIFACT)
        self.artifact_dir = Path(example).parent if example else directory.parent

    def _audio_path(self, value: Any, row: int) -> str:
        if not isinstance(value, (str, os.PathLike)) or not str(value):
            raise ValueError(f"row {row}: column 'audio' must be a file path, got {value!r}")
        path = Path(value)
        if not path.is_absolute() and not path.is_file() and self.artifact_dir is not None:
            if (self.artifact_dir / path).is_file():
                path = self.artifact_dir / path
        if not path.is_file():
            raise FileNotFoundError(f"row {row}: audio file {value} not found")
        return str(path)

    # No type hints here: MLflow would read them as an input schema; the logged
    # signature gives it.
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        import pandas as pd
        import torch

        if self.model is None:
            self.load_context(context)
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "audio" not in frame.columns:
            raise ValueError(f"the input needs a column 'audio' (file paths); it has {list(frame.columns)}")
        batch_size = int((params or {}).get("batch_size") or self.batch_size)
        paths = [self._audio_path(v, i) for i, v in enumerate(frame["audio"].tolist())]
        texts = [_text(v, i) for i, v in enumerate(frame["text"].tolist())] if "text" in frame else [""] * len(paths)
        columns: dict[str, list[Any]] = {f: [] for f in self.fields}
        for start in range(0, len(paths), batch_size):
            out = self.model.embed(audio=paths[start : start + batch_size], text=texts[start : start + batch_size])
            for field in self.fields:
                values = out[field]
                if isinstance(values, torch.Tensor):
                    values = values.float().cpu().numpy()
                for value in values:
                    if field in VECTOR_OUTPUTS:
                        columns[field].append(np.asarray(value, dtype=np.float32).tolist())
                    elif field == "label":
                        columns[field].append(int(value))
                    elif field == "score":
                        columns[field].append(float(value))
                    else:
                        columns[field].append(str(value))
        return pd.DataFrame(columns, index=frame.index)


def _text(value: Any, row: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if not isinstance(value, str):
        raise ValueError(f"row {row}: column 'text' must be a string, got {type(value).__name__}")
    return value


def output_fields(directory: str | os.PathLike) -> list[str]:
    """The columns ``predict`` returns for the model directory, read from its config.json."""
    from ctal_ds.model.pretrained import read_pretrained_config

    meta = read_pretrained_config(directory)
    fields = ["audio_pooled", "text_pooled"]
    kind = (meta.get("head") or {}).get("task")
    if not kind:
        return fields
    fields.append("embedding")
    if kind == "regression":
        return [*fields, "score"]
    fields += ["probs", "label"]
    if meta.get("label_names"):
        fields.append("label_name")
    if kind == "speaker":
        fields.append("speaker_embedding")
    return fields


def signature(fields: list[str]) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema

    kinds = {"label": DataType.long, "score": DataType.double, "label_name": DataType.string}
    outputs = [ColSpec(Array(DataType.float) if f in VECTOR_OUTPUTS else kinds[f], f) for f in fields]
    return ModelSignature(
        inputs=Schema([ColSpec(DataType.string, "audio"), ColSpec(DataType.string, "text", required=False)]),
        outputs=Schema(outputs),
        params=ParamSchema([ParamSpec("batch_size", DataType.long, DEFAULT_BATCH_SIZE)]),
    )


def write_example_wav(path: Path, seconds: float = 0.5, sample_rate: int = 16000) -> Path:
    """A short harmonic tone: real audio for the logged input example."""
    import soundfile

    t = np.arange(int(seconds * sample_rate)) / sample_rate
    tone = sum(np.sin(2 * np.pi * 140.0 * k * t) / k for k in range(1, 6)) * np.hanning(t.size)
    soundfile.write(path, (0.2 * tone).astype(np.float32), sample_rate)
    return path


def requirements() -> list[str]:
    """Pinned to the versions installed here, as MLflow pins the requirements it infers."""
    from importlib.metadata import PackageNotFoundError, version

    pinned = []
    for name in REQUIREMENTS:
        try:
            pinned.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            pinned.append(name)
    return pinned


def log_export(
    directory: str | os.PathLike,
    run_id: str | None = None,
    tracking_uri: str | None = None,
    registered_model_name: str | None = None,
    name: str = DEFAULT_NAME,
) -> Any:
    """Log the export ``directory`` as a pyfunc model into the run ``run_id`` (an existing
    run of ``tracking_uri``) and, with ``registered_model_name``, register it as a new
    version of that name. Returns MLflow's ``ModelInfo`` (``model_uri``,
    ``registered_model_version``)."""
    import mlflow
    import pandas as pd
    from mlflow.models import Model

    directory = Path(directory)
    fields = output_fields(directory)
    with tempfile.TemporaryDirectory(prefix="ctal-pyfunc-") as tmp, _tracking_uri(tracking_uri):
        example = write_example_wav(Path(tmp) / EXAMPLE_FILE)
        # Within the run, so that the model lands in the run's experiment (and its
        # artifact location); the caller's tracker sets the run's final status.
        active = mlflow.active_run()
        own = run_id is not None and (active is None or active.info.run_id != run_id)
        with mlflow.start_run(run_id=run_id, nested=active is not None) if own else contextlib.nullcontext():
            return Model.log(
                artifact_path=None,
                name=name,
                flavor=mlflow.pyfunc,
                run_id=run_id,
                registered_model_name=registered_model_name,
                python_model=CTALPyfunc(),
                artifacts={MODEL_ARTIFACT: str(directory), EXAMPLE_ARTIFACT: str(example)},
                code_paths=[str(Path(__file__).resolve().parents[1])],
                signature=signature(fields),
                input_example=pd.DataFrame({"audio": [EXAMPLE_FILE], "text": [EXAMPLE_TEXT]}),
                pip_requirements=requirements(),
            )


@contextlib.contextmanager
def _tracking_uri(uri: str | None):
    """MLflow's global tracking URI set to ``uri`` for the block, then back as it was:
    ``mlflow.set_tracking_uri`` also sets (or, given None, unsets) $MLFLOW_TRACKING_URI,
    so both are restored; an unset URI stays unset."""
    if uri is None:
        yield
        return
    import mlflow

    try:
        from mlflow.tracking._tracking_service import utils
    except ImportError:  # a private module; without it, the URI stays set
        utils = None
    before = getattr(utils, "_tracking_uri", None)
    env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        if utils is not None:
            mlflow.set_tracking_uri(before)
            if env is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = env
