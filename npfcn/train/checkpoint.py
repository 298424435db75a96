"""Checkpoints that never lose work: one ``.npz`` file, versioned, checksummed, written atomically.

File layout (a NumPy ``.npz``, i.e. a zip of ``.npy`` arrays; no pickles)::

    model/<param name>    every model parameter, e.g. "model/conv1_1.weight"
    optim/<i>             the arrays of the optimizer state, numbered
    __meta__              uint8 bytes of a UTF-8 JSON document:
        {"format": "npfcn-checkpoint", "version": 1,
         "checksum": "<sha256 hex>",            # over every other array, see _checksum
         "optimizer": <optimizer state with each array replaced by {"__array__": "optim/<i>"}>,
         ... the caller's meta: epoch, step, rng states, config, class_names,
             preprocessing, best_mean_iou ...}

The SHA-256 covers each array's name, dtype, shape and bytes, so a flipped bit
anywhere, a renamed array or a truncated file is detected on load.

Writing is atomic: the bytes go to a temporary file in the destination folder,
are flushed and fsync'ed, and only then ``os.replace`` puts the file in place
(followed by an fsync of the folder so the rename itself is durable).  A crash
at any moment leaves either the old complete checkpoint or the new complete
one, never a mix; a stray temporary file (``.<name>.tmp-*``) is all a crash can
leave behind.

Loading validates everything - version, checksum, finite weights, and (when a
model is given) architecture and number of classes - before it assigns a single
weight, so a model is never half-loaded.
"""
import hashlib
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field

import numpy as np

FORMAT_NAME = "npfcn-checkpoint"
FORMAT_VERSION = 1
META_KEY = "__meta__"
MODEL_PREFIX = "model/"
OPTIM_PREFIX = "optim/"

# The entries of model.config that decide which weights exist and their shapes;
# a checkpoint may only be loaded into a model that agrees on all of them.
ARCHITECTURE_KEYS = ("model", "num_classes", "width")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: corrupted, truncated, wrong version or wrong model."""


@dataclass
class Checkpoint:
    """What ``load_checkpoint`` returns: verified arrays and metadata, nothing assigned yet.

    model_state:     {param name: ndarray}
    optimizer_state: the optimizer's ``state_dict()`` as it was saved, or None
    meta:            the caller's metadata (epoch, step, rng states, config, ...)
    """

    path: str
    model_state: dict
    optimizer_state: object = None
    meta: dict = field(default_factory=dict)

    @property
    def model_config(self):
        """The model's config (``build_model(**model_config)`` rebuilds it), or None."""
        config = self.meta.get("config") or {}
        return config.get("model")


# --- saving ---------------------------------------------------------------------------

def save_checkpoint(path, model, optimizer=None, meta=None):
    """Write ``model`` (and ``optimizer``) to ``path`` atomically; returns ``path``.

    meta: a JSON-serialisable dict (epoch, step, RNG states, config, class names,
    preprocessing, best mean IoU...).  ``meta["config"]["model"]`` defaults to
    ``model.config``.  Non-finite weights are refused, so a diverged model can
    never overwrite a good checkpoint.
    """
    path = os.fspath(path)
    state = model.state_dict() if hasattr(model, "state_dict") else dict(model)
    arrays = {}
    for name, value in state.items():
        value = np.asarray(value)
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise CheckpointError(f"refusing to save {path}: weight {name!r} contains NaN or inf")
        arrays[MODEL_PREFIX + name] = value

    document = dict(meta or {})
    config = dict(document.get("config") or {})
    if "model" not in config and hasattr(model, "config"):
        config["model"] = dict(model.config)
    document["config"] = config
    if optimizer is not None:
        state = optimizer.state_dict() if hasattr(optimizer, "state_dict") else optimizer
        document["optimizer"] = _split_arrays(state, arrays)
    document["format"] = FORMAT_NAME
    document["version"] = FORMAT_VERSION
    document["checksum"] = _checksum(arrays)
    try:
        payload = json.dumps(document, allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot save {path}: metadata is not JSON-serialisable ({exc})") from exc
    arrays[META_KEY] = np.frombuffer(payload.encode("utf-8"), dtype=np.uint8)
    _atomic_savez(path, arrays)
    return path


def _atomic_savez(path, arrays):
    """np.savez into a temp file next to ``path``, fsync, rename over ``path``, fsync the folder."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=folder)
    try:
        # mkstemp creates the file private (0600); give it the usual permissions instead.
        os.chmod(tmp, 0o666 & ~_current_umask())
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Also on KeyboardInterrupt: never leave the half-written temp file behind.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_folder(folder)


def _current_umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_folder(folder):
    """Make the rename durable (POSIX); folders cannot be opened on Windows, which is fine."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _split_arrays(value, arrays):
    """Replace every ndarray inside ``value`` (nested dicts/lists) by a reference into ``arrays``."""
    if isinstance(value, np.ndarray):
        key = f"{OPTIM_PREFIX}{sum(k.startswith(OPTIM_PREFIX) for k in arrays)}"
        arrays[key] = value
        return {"__array__": key}
    if isinstance(value, dict):
        return {str(k): _split_arrays(v, arrays) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_split_arrays(v, arrays) for v in value]
    return value


def _join_arrays(value, arrays):
    """Inverse of _split_arrays."""
    if isinstance(value, dict):
        if set(value) == {"__array__"}:
            return arrays[value["__array__"]]
        return {k: _join_arrays(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_join_arrays(v, arrays) for v in value]
    return value


def _json_default(value):
    """NumPy scalars in metadata (an epoch counted in np.int64, say) become Python numbers."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _checksum(arrays):
    """SHA-256 over (name, dtype, shape, bytes) of every array, in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        header = f"{name}\0{array.dtype.str}\0{array.shape}\0"
        digest.update(header.encode("utf-8"))
        digest.update(array.tobytes())
    return digest.hexdigest()


# --- loading --------------------------------------------------------------------------

def load_checkpoint(path):
    """Read and verify a checkpoint; returns a ``Checkpoint`` (nothing is assigned anywhere).

    Raises FileNotFoundError for a missing file and CheckpointError (naming the
    file) for anything else wrong: not an npfcn checkpoint, unknown format
    version, truncated or corrupted bytes (checksum or zip CRC mismatch), or
    NaN/inf weights.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    arrays = _read_arrays(path)
    if META_KEY not in arrays:
        raise CheckpointError(f"{path} is not an npfcn checkpoint (no {META_KEY} entry)")
    try:
        document = json.loads(arrays.pop(META_KEY).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: checkpoint metadata is corrupted ({exc})") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} is not an npfcn checkpoint (format {document.get('format')!r})"
                              if isinstance(document, dict) else f"{path} is not an npfcn checkpoint")
    version = document.get("version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {version!r}; this npfcn "
                              f"reads version {FORMAT_VERSION}")
    if document.get("checksum") != _checksum(arrays):
        raise CheckpointError(f"{path} is corrupted: the checksum of its arrays does not match")

    model_state = {k[len(MODEL_PREFIX):]: v for k, v in arrays.items() if k.startswith(MODEL_PREFIX)}
    if not model_state:
        raise CheckpointError(f"{path} holds no model weights")
    for name, value in model_state.items():
        if value.dtype.kind != "f":
            raise CheckpointError(f"{path}: weight {name!r} has non-float dtype {value.dtype}")
        if not np.all(np.isfinite(value)):
            raise CheckpointError(f"{path}: weight {name!r} contains NaN or inf")
    _check_config_fits_weights(path, document, model_state)
    _check_score_offset(path, document.get("score_offset"), model_state)
    optimizer_state = document.pop("optimizer", None)
    if optimizer_state is not None:
        try:
            optimizer_state = _join_arrays(optimizer_state, arrays)
        except KeyError as exc:
            raise CheckpointError(f"{path}: optimizer state refers to missing array {exc}") from exc
    for key in ("format", "version", "checksum"):
        document.pop(key, None)
    return Checkpoint(path=path, model_state=model_state, optimizer_state=optimizer_state,
                      meta=document)


def _check_score_offset(path, offset, model_state):
    """The predictions' per-class score offsets (``npfcn.losses.prior_correction``):
    absent/None, or one finite number per class (``score_fr.bias`` has one per class)."""
    if offset is None:
        return
    numbers = isinstance(offset, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in offset)
    bias = model_state.get("score_fr.bias")
    if not numbers or (bias is not None and len(offset) != bias.shape[0]):
        classes = "" if bias is None else f" ({bias.shape[0]} classes)"
        raise CheckpointError(f"{path}: score_offset must hold one finite number per "
                              f"class{classes}, got {offset!r}")


def _check_config_fits_weights(path, document, model_state):
    """The recorded architecture must be the one the (checksummed) arrays describe.

    The metadata is not covered by the checksum, and models are rebuilt from it
    (``load_model``, resuming a run): a corrupted width or class count would
    otherwise have a model built - terabytes for a width of 64 - before the
    shapes are compared.  ``parameter_shapes`` computes shapes without allocating.
    """
    config = document.get("config") if isinstance(document.get("config"), dict) else {}
    model_config = config.get("model")
    if not isinstance(model_config, dict) or "model" not in model_config:
        return
    from ..models import parameter_shapes

    try:
        expected = parameter_shapes(model_config["model"], model_config.get("num_classes", 21),
                                    model_config.get("width", 1.0))
    except (TypeError, ValueError, OverflowError) as exc:
        raise CheckpointError(f"{path}: the recorded model {model_config} is invalid ({exc})") from exc
    stored = {name: tuple(value.shape) for name, value in model_state.items()}
    if {name: tuple(shape) for name, shape in expected.items()} != stored:
        raise CheckpointError(f"{path}: the recorded model ({_describe(model_config)}) does not "
                              "match the stored weights (corrupted metadata?)")
    train = config.get("train")
    if isinstance(train, dict):
        for key in ("model", "width"):
            if key in train and train[key] != model_config.get(key):
                raise CheckpointError(f"{path}: the training settings say {key} {train[key]!r} "
                                      f"but the model is {model_config.get(key)!r} "
                                      "(corrupted metadata?)")


def _read_arrays(path):
    """Every array of the .npz, fully read (so zip CRC errors surface here), as a dict."""
    try:
        check_npz_sizes(path)
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError, KeyError, MemoryError, zipfile.BadZipFile,
            zipfile.LargeZipFile) as exc:
        raise CheckpointError(f"{path} is not a readable npfcn checkpoint (truncated or "
                              f"corrupted?): {exc}") from exc


def check_npz_sizes(path):
    """Each .npy member's header must not claim more bytes than the member holds.

    np.load allocates the shape the header declares before reading the data, so a
    corrupted header (a shape of 10**12) would otherwise ask for terabytes.
    """
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(member)
                declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
                if declared > info.file_size:
                    raise ValueError(f"array {info.filename} declares shape {shape} "
                                     f"({declared} bytes) but holds {info.file_size} bytes")


def check_compatible(checkpoint, model):
    """Raise CheckpointError unless ``checkpoint``'s weights fit ``model`` exactly.

    Compares the architecture entries of the configs first (for a readable
    message: "fcn16s with 5 classes"), then every parameter name and shape.
    """
    path = checkpoint.path
    saved = checkpoint.model_config or {}
    current = getattr(model, "config", {}) or {}
    for key in ARCHITECTURE_KEYS:
        if key in saved and key in current and saved[key] != current[key]:
            raise CheckpointError(
                f"{path} is a checkpoint for a different model: {_describe(saved)}, "
                f"but the model is {_describe(current)} ({key} differs)")
    params = model.params
    missing = sorted(set(params) - set(checkpoint.model_state))
    unexpected = sorted(set(checkpoint.model_state) - set(params))
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match the model: missing weights {missing[:5]}, "
                              f"unexpected weights {unexpected[:5]}")
    for name, value in checkpoint.model_state.items():
        if value.shape != params[name].shape:
            raise CheckpointError(f"{path}: weight {name!r} has shape {value.shape} but the "
                                  f"model needs {params[name].shape} (different architecture?)")


def _describe(config):
    return (f"{config.get('model', '?')} with {config.get('num_classes', '?')} classes, "
            f"width {config.get('width', '?')}")


def load_into(checkpoint, model, optimizer=None):
    """Assign a verified checkpoint's weights (and optimizer state) to ``model``.

    Everything is validated before anything is assigned; weights are cast to the
    model's dtype (a float32 checkpoint loads into a float64 model for gradient
    checks).
    """
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = load_checkpoint(checkpoint)
    check_compatible(checkpoint, model)
    if optimizer is not None and checkpoint.optimizer_state is None:
        raise CheckpointError(f"{checkpoint.path} holds no optimizer state to resume from")
    state = {name: np.asarray(value, dtype=model.params[name].dtype)
             for name, value in checkpoint.model_state.items()}
    # Both load_state_dict methods check everything before assigning anything.  The
    # optimizer goes first, so that a mismatched optimizer state (an SGD checkpoint
    # resumed with Adam) leaves the model untouched; should the model then refuse,
    # the optimizer gets its previous state back.  Either both load or neither does.
    previous = optimizer.state_dict() if optimizer is not None else None
    try:
        if optimizer is not None:
            optimizer.load_state_dict(checkpoint.optimizer_state)
        model.load_state_dict(state)
    except (ValueError, TypeError, KeyError) as exc:
        if previous is not None:
            optimizer.load_state_dict(previous)
        raise CheckpointError(f"{checkpoint.path}: {exc}") from exc
    return model


def load_model(path, dtype=np.float32):
    """Rebuild the model described in a checkpoint and load its weights; returns the model."""
    from ..models import build_model

    checkpoint = path if isinstance(path, Checkpoint) else load_checkpoint(path)
    config = checkpoint.model_config
    if not isinstance(config, dict) or "model" not in config:
        raise CheckpointError(f"{checkpoint.path} does not record which model it holds")
    try:
        model = build_model(**config, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{checkpoint.path}: cannot rebuild the model {config}: {exc}") from exc
    return load_into(checkpoint, model)
