r"""CIFAR-10, wide ResNet 16-4, lbt's hybrid variant with B_max = 5,120: NOT the paper's hybrid.

The paper's "Hybrid" (Smith, Kindermans, Ying & Le, ICLR 2018, section 5.1) grows B only at the
first step and keeps B = 640 after it: that is cifar10_wrn16_4_hybrid. This variant is lbt's:
`hybrid` with the B_max = 5,120 of the paper's section 5.2 runs, so B grows by 5 at epochs 60 and
120 (128 -> 640 -> 3,200) and reaches B_max at epoch 160, where ε = 0.1 * 5,120 / 16,000 = 0.032
absorbs the rest of the factor so that g equals decay_lr's.
Paper's figures: none; no run of the paper has this schedule. lbt's plan: 29,142 updates.
lbt's assumptions: the whole schedule, and those of cifar10_wrn16_4_decay_lr (its base: Nesterov,
weight decay 5e-4 as Holt & Sievert, SciPy 2021, give for the paper's CIFAR runs). B = 5,120 >
N/10 in the last phase: εN/(B(1-m)) overstates the exact g by 11% there (`lbt plan` warns).

Command:
  lbt train --config configs/cifar10_wrn16_4_hybrid_5120.py --workdir /tmp/wrn_hybrid_5120
  lbt plan --config configs/cifar10_wrn16_4_hybrid_5120.py    # phases, steps, plan.png

Hardware: designed for one host with 8 accelerators (e.g. a TPU v3-8/v4-8 or 8 GPUs): the global
microbatch M = 128 is 16 per device; larger B is reached by accumulating k = B / M microbatches
(k up to 40), so any device count dividing 128 works (elastic), only the wall-clock changes.

Expected: ~94% test accuracy if the noise-scale argument holds (not run here; no published figure).
Expected updates: 29,142 optimizer steps (23,438 + 4,688 + 625 + 391), 2.68x fewer than decay_lr.
"""

from lbt.config import sibling_config


def get_config():
    """The cifar10_wrn16_4_decay_lr reference recipe with only the batch schedule changed."""
    config = sibling_config(__file__, "cifar10_wrn16_4_decay_lr")
    config.name = "cifar10_wrn16_4_hybrid_5120"
    config.schedule.batch.mode = "hybrid"
    config.schedule.batch.max_global_batch = 5120
    return config
