"""Training checkpoints: what a save leaves on disk, and what a load refuses."""
import json
import os
import re

import pytest
import torch
from safetensors import SafetensorError

from geovario.config import load_config
from geovario.errors import GeovarioError
from geovario.train import Trainer
from geovario.train import checkpoints
from geovario.train.checkpoints import load_checkpoint, save_checkpoint
from test_train import SMALL, make_store


@pytest.fixture
def run(tmp_path):
    store = make_store(tmp_path / "store", 64, seed=0).folder
    return Trainer(load_config(None, SMALL + [f"data.train={store}"]), tmp_path / "run", progress=False)


def _save(run, step):
    run.state.step = step
    return save_checkpoint(run.run_dir, run.model, run.optimizer, run.scheduler, run.negatives, run.state)


def _load(run, negatives=None):
    return load_checkpoint(run.run_dir, run.model, run.optimizer, run.scheduler, negatives or run.negatives)


def test_a_run_keeps_its_two_newest_checkpoints_and_replaces_a_stale_temporary(run):
    """Two, so that a newest one damaged on disk still leaves one to resume from; a temporary folder this process left
    for the same step (a write that failed before) is replaced, not an obstacle."""
    folder = run.run_dir / "checkpoints"
    for step in (1, 2, 3):
        _save(run, step)
    stale = folder / f".tmp-step-00000004-{os.getpid()}"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    _save(run, 4)
    assert sorted(p.name for p in folder.iterdir()) == ["latest", "step-00000003", "step-00000004"]
    assert (folder / "latest").read_text() == "step-00000004"


def test_a_load_restores_the_random_state_of_the_save(run):
    _save(run, 1)
    expected = torch.rand(4)
    torch.manual_seed(12345)
    assert _load(run).step == 1
    assert torch.equal(torch.rand(4), expected)


def test_a_checkpoint_holding_files_it_did_not_write_is_refused(run):
    saved = _save(run, 1)
    (saved / "notes.txt").write_text("added later")
    with pytest.raises(GeovarioError, match=re.escape(f"{saved}: its files (model.safetensors, negatives.safetensors, notes.txt, "
                                                      "optimizer.safetensors, state.json) are not the ones written")):
        _load(run)


def test_a_checkpoint_of_a_diverged_model_is_refused(run):
    with torch.no_grad():
        next(run.model.parameters()).fill_(float("nan"))
    saved = _save(run, 1)
    with pytest.raises(GeovarioError, match=re.escape(f"{saved / 'model.safetensors'}: ") + r".* holds NaN or infinity"):
        _load(run)


def test_a_checkpoint_of_other_negatives_is_refused_naming_what_differs(run, tmp_path):
    saved = _save(run, 1)
    store = make_store(tmp_path / "store2", 64, seed=1).folder
    other = Trainer(load_config(None, SMALL + [f"data.train={store}", "model.queue_size=32"]), tmp_path / "other", progress=False)
    differing = sorted(k for k, v in other.negatives.state_dict().items() if v.shape != run.negatives.state_dict()[k].shape)
    assert differing
    with pytest.raises(GeovarioError, match=re.escape(f"{saved}: checkpoint from a run with other negatives (another queue size or "
                                                      f"source) (differs at {differing[:3]})")):
        _load(run, other.negatives)


def test_a_serialisation_error_names_its_cause_in_one_line(run, monkeypatch):
    _save(run, 1)

    def failing(tensors, path):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left" })')

    monkeypatch.setattr(checkpoints, "save_file", failing)
    with pytest.raises(GeovarioError) as failure:
        _save(run, 2)
    assert str(failure.value) == (f"{run.run_dir / 'checkpoints' / 'step-00000002'}: cannot write the checkpoint of step 2 "
                                  '(IoError(Os { code: 28, kind: StorageFull, message: "No space left" })); the last one '
                                  "(checkpoints/step-00000001) is intact: free space, then --resume")
    assert sorted(p.name for p in (run.run_dir / "checkpoints").iterdir()) == ["latest", "step-00000001"]

    def failing_without_detail(tensors, path):
        raise SafetensorError("disk full")

    monkeypatch.setattr(checkpoints, "save_file", failing_without_detail)
    with pytest.raises(GeovarioError, match=r"cannot write the checkpoint of step 2 \(disk full\); the last one"):
        _save(run, 2)
    assert json.loads((run.run_dir / "checkpoints" / "step-00000001" / "state.json").read_text())["step"] == 1


def test_a_checkpoint_of_a_scaled_run_loads_where_no_loss_scaler_runs(run):
    """fp16 training on CUDA records its loss scale; a load without a scaler (the library, a CPU resume) ignores it."""
    scaler = torch.amp.GradScaler("cpu", init_scale=512.0)
    scaler.scale(torch.tensor(1.0))
    run.state.step = 3
    save_checkpoint(run.run_dir, run.model, run.optimizer, run.scheduler, run.negatives, run.state, scaler)
    assert load_checkpoint(run.run_dir, run.model, run.optimizer, run.scheduler, run.negatives).step == 3
    assert load_checkpoint(run.run_dir, run.model, run.optimizer, run.scheduler, run.negatives,
                           torch.amp.GradScaler("cpu", enabled=False)).step == 3


def test_a_checkpoint_of_another_architecture_names_the_tensors_only_one_side_has(run, tmp_path):
    """A model of four location scales against a checkpoint of three: the tensors of the fourth are what differs."""
    import ast

    saved = _save(run, 1)
    store = make_store(tmp_path / "store2", 64, seed=1).folder
    wider = Trainer(load_config(None, SMALL + [f"data.train={store}", "model.sigmas=[1, 16, 256, 4096]"]), tmp_path / "w",
                    progress=False)
    only_wider = set(wider.model.state_dict()) - set(run.model.state_dict())
    assert only_wider
    with pytest.raises(GeovarioError, match=re.escape(f"{saved}: checkpoint from an incompatible model (differs at ")) as failure:
        load_checkpoint(run.run_dir, wider.model, wider.optimizer, wider.scheduler, run.negatives)
    named = ast.literal_eval(re.search(r"differs at (\[.*\])\)$", str(failure.value)).group(1))
    assert named and set(named) <= only_wider and named == sorted(only_wider)[:3]


def test_checkpointing_goes_on_where_a_folder_cannot_be_removed(run, monkeypatch):
    """Removing a superseded checkpoint, a stale temporary or a failed write's leftovers can fail (another process,
    a network disk): the new checkpoint is kept, a resume still starts, and a failed write still says why in one line."""
    import shutil

    real = shutil.rmtree

    def refusing(path, ignore_errors=False, **kwargs):
        if not ignore_errors:
            raise PermissionError(13, "Permission denied", str(path))

    for step in (1, 2):
        _save(run, step)
    stale = run.run_dir / "checkpoints" / ".tmp-step-00000009-1"
    stale.mkdir()
    monkeypatch.setattr(checkpoints.shutil, "rmtree", refusing)
    _save(run, 3)  # step-1 should go, and cannot
    assert (run.run_dir / "checkpoints" / "latest").read_text() == "step-00000003"
    assert checkpoints.remove_stale_temporaries(run.run_dir) == [stale]

    mkdir = checkpoints.Path.mkdir

    def no_room(self, *args, **kwargs):  # the checkpoint's temporary folder cannot be made
        if self.name.startswith(".tmp-step-"):
            raise OSError(28, "No space left on device")
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(checkpoints.Path, "mkdir", no_room)
    with pytest.raises(GeovarioError, match=r"cannot write the checkpoint of step 4 \(No space left on device\); the last one "
                                            r"\(checkpoints/step-00000003\) is intact"):
        _save(run, 4)
    monkeypatch.setattr(checkpoints.shutil, "rmtree", real)
