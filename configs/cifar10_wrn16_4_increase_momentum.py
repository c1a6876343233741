r"""CIFAR-10, wide ResNet 16-4, batch mode `increase_momentum` (Smith, Kindermans, Ying & Le, ICLR 2018, section 5).

Paper section 5.2 'Increased momentum coefficient': m = 0.98 and B = 640 from the start (B scaled by (1 - 0.9) / (1 - 0.98) = 5, same g), ε = 0.1, then B x5 at epochs 60 and 120 up to B_max = 5,120 at which ε absorbs the rest.

Command:
  lbt train --config configs/cifar10_wrn16_4_increase_momentum.py --workdir /tmp/wrn_increase_momentum
  lbt plan --config configs/cifar10_wrn16_4_increase_momentum.py    # phases, steps, plan.png

Hardware: designed for one host with 8 accelerators (e.g. a TPU v3-8/v4-8 or 8 GPUs): the global
microbatch M = 128 is 16 per device; larger B is reached by accumulating k = B / M microbatches,
so any device count dividing 128 works (elastic), only the wall-clock changes. On one GPU
(k = 1..125 microbatches of 128) the 200 epochs take roughly 6-10 hours.

Setup (paper 5.1): N = 50,000, 200 epochs, m = 0.9, weight decay 5e-4, ghost batch 128,
B_max = 5,120 where capped.
Expected: test accuracy ~93-94% (paper: slightly below; momentum 0.98 costs a little accuracy).
Expected updates: 6,407 optimizer steps (4,688 + 938 + 391 + 390), 12.2x fewer than decay_lr.
"""

from lbt.config import sibling_config


def get_config():
    """The cifar10_wrn16_4_decay_lr reference recipe with only the batch schedule changed."""
    config = sibling_config(__file__, "cifar10_wrn16_4_decay_lr")
    config.name = "cifar10_wrn16_4_increase_momentum"
    config.schedule.batch.mode = "increase_momentum"
    config.schedule.batch.max_global_batch = 5120
    config.schedule.batch.final_momentum = 0.98
    return config
