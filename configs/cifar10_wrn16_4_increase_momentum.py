r"""CIFAR-10, wide ResNet 16-4, the paper's "increased momentum coefficient" run (Smith,
Kindermans, Ying & Le, ICLR 2018, "Don't Decay the Learning Rate, Increase the Batch Size",
section 5.2): batch mode `increase_momentum`, m = 0.98, lr_factor 5, B_max = 5,120.

Paper: initial ε = 0.5, momentum 0.98, initial batch 3,200, B_max = 5,120 (section 5.2). Against
decay_lr's ε = 0.1, m = 0.9, B = 128 that is B x (1 - 0.9) / (1 - 0.98) = 5 for the momentum and
ε and B x 5 for the learning rate: 128 * 25 = 3,200, the same g = εN/(B(1-m)). The batch then
grows at the original steps until B_max, then ε decays: B = 5,120 at epoch 60 (ε = 0.5 * 5,120 /
16,000 = 0.16 absorbs the rest), ε = 0.032 at epoch 120 and 0.0064 at epoch 160. Model, optimizer
and ghost batch as cifar10_wrn16_4_decay_lr (Nesterov, weight decay 5e-4: Holt & Sievert, SciPy
2021).
Paper's figures: 93.3% test accuracy, against 94.3% for the original schedule, in fewer than
2,500 parameter updates (section 5.2); lbt's plan: 2,305 updates, which matches. (Keeping
B = 3,200 after the first step would take 3,125.)
lbt's assumptions: those of cifar10_wrn16_4_decay_lr; the rule at B_max (B = 5,120, ε absorbs
the rest). With m = 0.98 the momentum buffer needs about 1/(1-m) = 50 of the 2,305 updates to
fill (docs/schedules.md). B = 5,120 > N/10 from epoch 60: εN/(B(1-m)) overstates the exact g by
11% there (`lbt plan` warns).

Command:
  lbt train --config configs/cifar10_wrn16_4_increase_momentum.py --workdir /tmp/wrn_increase_momentum
  lbt plan --config configs/cifar10_wrn16_4_increase_momentum.py    # phases, steps, plan.png

Hardware: designed for one host with 8 accelerators (e.g. a TPU v3-8/v4-8 or 8 GPUs): the global
microbatch M = 128 is 16 per device; B = 3,200 and 5,120 are k = 25 and 40 microbatches
accumulated before the single all-reduce, so any device count dividing 128 works (elastic).

Expected: ~93.3% test accuracy (the paper's figure; not run here).
Expected updates: 2,305 optimizer steps (938 + 586 + 391 + 390), 33.9x fewer than decay_lr.
"""

from lbt.config import sibling_config


def get_config():
    """The cifar10_wrn16_4_decay_lr reference recipe with only the batch schedule changed."""
    config = sibling_config(__file__, "cifar10_wrn16_4_decay_lr")
    config.name = "cifar10_wrn16_4_increase_momentum"
    config.schedule.batch.mode = "increase_momentum"
    config.schedule.batch.max_global_batch = 5120
    config.schedule.batch.final_momentum = 0.98
    config.schedule.batch.lr_factor = 5.0
    return config
