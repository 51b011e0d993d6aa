"""Run logs: one JSON line per logged step (``metrics.jsonl``) and TensorBoard scalars (``tb/``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter


class RunLogger:
    def __init__(self, run_dir: Path, resume_step: int | None = None) -> None:
        self.path = run_dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            self._drop_after(resume_step)
        self.tensorboard = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step)

    def _drop_after(self, step: int) -> None:
        """On resume, forget lines logged after the checkpoint so the log reads as one run."""
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"step": step, **metrics}) + "\n")
        for key, value in metrics.items():
            if isinstance(value, int | float):
                self.tensorboard.add_scalar(key, value, step)

    def close(self) -> None:
        self.tensorboard.close()
