"""Write ``torch_lr_reference.json``: torch's CyclicLR and OneCycleLR learning rates, per iteration.

``tests/test_schedules.py`` asserts lbt's ``cyclic`` and ``onecycle`` against these stored numbers,
so the suite checks torch's values without installing torch (its CPU build is about 750 MB).
Rerun this script only to change the cases; it needs torch (``pip install torch``; a CPU build
is enough)::

    python tests/data/make_torch_lr_reference.py      # rewrites tests/data/torch_lr_reference.json

Each case records the arguments and the LR of ``param_groups[0]`` before every ``step()``, as
the test compares them: iteration ``it`` of lbt <-> the LR torch uses for its ``it``-th step.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).with_name("torch_lr_reference.json")

CYCLIC = dict(base_lr=0.001, max_lr=0.006, step_size=300, gamma=0.9995, iterations=2500)
ONECYCLE = dict(max_lr=0.8, total_steps=1000, pct_start=0.25, div_factor=20.0, final_div_factor=1e3)


def _lrs(torch, make_scheduler, lr: float, n: int) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr, momentum=0.9)
    sched = make_scheduler(opt)
    out = []
    for _ in range(n):
        out.append(float(opt.param_groups[0]["lr"]))
        opt.step()
        sched.step()
    return out


def main() -> int:
    import torch

    c = CYCLIC
    cases = {}
    for mode in ("triangular", "triangular2", "exp_range"):
        lrs = _lrs(
            torch,
            lambda opt, mode=mode: torch.optim.lr_scheduler.CyclicLR(
                opt,
                base_lr=c["base_lr"],
                max_lr=c["max_lr"],
                step_size_up=c["step_size"],
                mode=mode,
                gamma=c["gamma"],
                cycle_momentum=False,
            ),
            c["base_lr"],
            c["iterations"],
        )
        cases[f"cyclic_{mode}"] = {"args": {**c, "mode": mode}, "lr": lrs}
    o = ONECYCLE
    lrs = _lrs(
        torch,
        lambda opt: torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=o["max_lr"],
            total_steps=o["total_steps"],
            pct_start=o["pct_start"],
            div_factor=o["div_factor"],
            final_div_factor=o["final_div_factor"],
            cycle_momentum=False,
        ),
        0.1,
        o["total_steps"],
    )
    cases["onecycle"] = {"args": o, "lr": lrs}
    doc = {"torch_version": torch.__version__, "generator": "tests/data/make_torch_lr_reference.py", "cases": cases}
    OUT.write_text(json.dumps(doc, indent=None, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} (torch {torch.__version__})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
