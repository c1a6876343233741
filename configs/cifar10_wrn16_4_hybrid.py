r"""CIFAR-10, wide ResNet 16-4, the paper's "Hybrid" schedule (Smith, Kindermans, Ying & Le, ICLR
2018, "Don't Decay the Learning Rate, Increase the Batch Size", section 5.1): batch mode `hybrid`
with B_max = 640.

Paper: "Hybrid holds the learning rate constant at the first step, instead increasing the batch
size by a factor of 5. However after this first step, the batch size was constant and the
learning rate decayed by a factor of 5 at each subsequent step" (the paper's section 5.1 as an
ICLR 2018 Reproducibility Challenge report on it gives it); the STAT946 summary of the paper
(University of Waterloo wiki) says the same: B grows by 5 at the first step and then stays
constant, which "mimics training on memory-limited systems". So B = 128 -> 640 at epoch 60, then
B = 640 with ε = 0.1 -> 0.02 -> 0.004 at epochs 120 and 160. Model, optimizer and ghost batch
as cifar10_wrn16_4_decay_lr (Nesterov, weight decay 5e-4: Holt & Sievert, SciPy 2021).
Paper's figures: test accuracy equivalent to the decaying schedule after the same epochs (the
paper's abstract). The accounts cited give no update count; lbt's plan: 34,376.
lbt's assumptions: those of cifar10_wrn16_4_decay_lr. (lbt's own B_max = 5,120 variant is
cifar10_wrn16_4_hybrid_5120.)

Command:
  lbt train --config configs/cifar10_wrn16_4_hybrid.py --workdir /tmp/wrn_hybrid
  lbt plan --config configs/cifar10_wrn16_4_hybrid.py    # phases, steps, plan.png

Hardware: designed for one host with 8 accelerators (e.g. a TPU v3-8/v4-8 or 8 GPUs): the global
microbatch M = 128 is 16 per device; B = 640 is k = 5 microbatches accumulated before the
all-reduce, so any device count dividing 128 works (elastic), only the wall-clock changes.

Expected: ~94% test accuracy, the decay_lr curve versus epochs (not run here).
Expected updates: 34,376 optimizer steps (23,438 + 4,688 + 3,125 + 3,125), 2.27x fewer than decay_lr.
"""

from lbt.config import sibling_config


def get_config():
    """The cifar10_wrn16_4_decay_lr reference recipe with only the batch schedule changed."""
    config = sibling_config(__file__, "cifar10_wrn16_4_decay_lr")
    config.name = "cifar10_wrn16_4_hybrid"
    config.schedule.batch.mode = "hybrid"
    config.schedule.batch.max_global_batch = 640
    return config
