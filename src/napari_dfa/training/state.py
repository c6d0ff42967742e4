"""Training state for ``--resume``: optimizer, LR schedule, RNG, epoch, history — without pickle.

Tensors (optimizer moments, RNG states, and the model's weights of the same epoch) go into a
``.safetensors`` file, everything else into its JSON metadata, written atomically next to
``last.safetensors``. The weights travel with the state because the two files are written one
after the other: a run killed between them left ``last.safetensors`` an epoch ahead of its state,
and resume trained that epoch again from the wrong weights. With both in one file (one rename),
the state is everything an uninterrupted run carries from one epoch to the next, whenever the run
was killed, so a resumed run ends with bit-identical weights.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import CheckpointError

FORMAT = "napari-dfa-train-state"


MODEL_PREFIX = "model."


def save_train_state(path, *, optimizer, scheduler, scaler=None, epoch: int, extra: dict, model=None) -> None:
    """Write the resumable state after ``epoch`` (1-based: epochs done), with ``model``'s weights
    (a ``torch.nn.Module``) of that epoch when given."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    if model is not None:
        for key, value in model.state_dict().items():
            tensors[MODEL_PREFIX + key] = value.detach().cpu().contiguous().clone()  # exact, unshared
    opt = optimizer.state_dict()
    opt_state_meta = {}
    for pid, st in opt["state"].items():
        meta = {}
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                meta[key] = value
        opt_state_meta[str(pid)] = meta
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    metadata = {
        "format": FORMAT,
        "epoch": str(epoch),
        "param_groups": json.dumps(opt["param_groups"]),
        "optim_state_meta": json.dumps(opt_state_meta),
        "scheduler": json.dumps(sched),
        "scaler": json.dumps(scaler.state_dict() if scaler is not None and scaler.is_enabled() else None),
        "extra": json.dumps(extra),
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_train_state(path, *, optimizer, scheduler, scaler=None, model=None) -> tuple[int, dict]:
    """Restore optimizer, scheduler, scaler and RNG from ``path``, and ``model``'s weights when
    the state holds them (``extra["weights_in_state"]`` says whether it did); returns
    ``(epochs done, extra)``."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            if meta.get("format") != FORMAT:
                raise CheckpointError(f"{path}: not a napari-dfa training state file; cannot resume from it")
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure
        raise CheckpointError(f"{path}: cannot read the training state ({exc}); start without --resume") from None
    state: dict = {}
    for pid, m in json.loads(meta["optim_state_meta"]).items():
        state[int(pid)] = dict(m)
    weights = {k[len(MODEL_PREFIX):]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    groups = json.loads(meta["param_groups"])
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: the optimizer state does not fit this model ({exc})") from None
    sched = json.loads(meta["scheduler"])
    sched["lr_lambdas"] = [None] * len(optimizer.param_groups)
    scheduler.load_state_dict(sched)
    scaler_state = json.loads(meta.get("scaler", "null"))
    if scaler is not None and scaler_state:
        scaler.load_state_dict(scaler_state)
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    extra = json.loads(meta["extra"])
    extra["weights_in_state"] = bool(weights)
    if weights and model is not None:
        try:
            model.load_state_dict(weights)
        except (RuntimeError, KeyError) as exc:
            raise CheckpointError(f"{path}: the weights saved with the training state do not fit this model "
                                  f"({str(exc).splitlines()[0]})") from None
    return int(meta["epoch"]), extra
