"""One rank of a geovario training job, for tests/test_distributed.py; run under torchrun:

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py SPEC.json OUT_DIR

SPEC.json lists scenarios ``{"name", "overrides", "steps"}``. For each, this rank builds the real
``Trainer`` (which joins the process group from torchrun's variables), takes ``steps`` steps and writes
``OUT_DIR/<name>.rank<R>.safetensors``: its gradients, parameters and queue after the last step
(and, with ``"record": true``, every step's candidate columns).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from geovario import distributed
from geovario.config import load_config
from geovario.errors import GeovarioError
from geovario.train import Trainer


def snapshot(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Gradients of the last step, parameters and the negative source's state (queue buffers), by name."""
    model = trainer.model
    tensors = {f"grad.{n}": p.grad.detach().cpu().clone() for n, p in model.named_parameters() if p.grad is not None}
    tensors |= {f"param.{n}": p.detach().cpu().clone() for n, p in model.named_parameters()}
    tensors |= {k: v.detach().cpu().clone() for k, v in trainer.negatives.state_dict().items()}
    if trainer.state.variogram:
        text = json.dumps(trainer.state.variogram, sort_keys=True).encode()
        tensors["variogram"] = torch.tensor(list(text), dtype=torch.uint8)  # the fitted model's JSON, as bytes
    return tensors


def candidate_record(trainer: Trainer, step: int) -> dict[str, torch.Tensor]:
    """What the step's candidates say about every column: its true and encoded GPS and its geometry."""
    c = trainer.last_candidates
    fields = {"query_gps": c.query_gps, "column_gps": c.column_gps, "targets": c.targets, "lags_km": c.lags_km,
              "dissimilarity": c.dissimilarity,
              "excluded": c.excluded if c.excluded is not None else torch.zeros(len(c.targets), c.column_gps.shape[-2], dtype=torch.bool)}
    if hasattr(c, "column_locations"):  # the queue: every column's noisy GPS, as encoded
        fields["column_locations"] = c.column_locations
    else:  # the gallery: per-row columns
        fields["column_locations"] = c.locations.reshape(len(c.query_gps), -1, 2)
        fields["column_index"] = torch.from_numpy(c.column_index)
    return {f"step{step}.{k}": v.detach().cpu().clone() for k, v in fields.items() if v is not None}


def run_scenario(scenario: dict, out: Path) -> dict[str, torch.Tensor]:
    """Take the scenario's steps; with ``record``, keep every step's candidates too. With ``nan_on_rank``, that rank's
    image head holds a NaN and the step's error message (empty if none) is all that is kept."""
    trainer = Trainer(load_config(None, scenario["overrides"]), out / scenario["name"], progress=False)
    if "nan_on_rank" in scenario:
        if trainer.world.rank == scenario["nan_on_rank"]:
            with torch.no_grad():
                trainer.model.image_head.mlp[0].weight[0, 0] = float("nan")
        try:
            trainer.step()
            message = ""
        except GeovarioError as e:
            message = str(e)
        return {"stopped": torch.tensor(list(message.encode()), dtype=torch.uint8)}
    records = {}
    for step in range(scenario["steps"]):
        trainer.step()
        if scenario.get("record"):
            records |= candidate_record(trainer, step)
    return snapshot(trainer) | records


def main(spec_path: str, out: str) -> int:
    out_dir = Path(out)
    for scenario in json.loads(Path(spec_path).read_text()):
        tensors = run_scenario(scenario, out_dir / "runs")
        save_file(tensors, str(out_dir / f"{scenario['name']}.rank{distributed.setup()[0].rank}.safetensors"))
    rank = distributed.setup()[0].rank
    import torch.distributed.fsdp  # noqa: F401  what transformers imports while extraction's group is up
    freed = distributed.teardown()
    (out_dir / f"teardown.rank{rank}.json").write_text(json.dumps({"group_freed": freed}))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
