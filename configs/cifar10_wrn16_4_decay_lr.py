r"""CIFAR-10, wide ResNet 16-4, the original schedule (batch mode `decay_lr`): the reference of
Smith, Kindermans, Ying & Le, "Don't Decay the Learning Rate, Increase the Batch Size", ICLR 2018
(arXiv:1711.00489), section 5.1.

Paper: "Decaying learning rate", which "follows the original implementation" of the WRN
(Zagoruyko & Komodakis 2016, section 3): B = 128 throughout, ε = 0.1 divided by 5 at epochs 60,
120 and 160 of 200, m = 0.9; ghost batch 128 (Smith et al. section 5.1). Optimizer: Nesterov
momentum with weight decay 5e-4, as a published reproduction states for the paper's CIFAR runs
(Holt & Sievert, "Training machine learning models faster with Dask", SciPy 2021,
doi:10.25080/majora-1b6fd038-011) and as Zagoruyko & Komodakis 2016 give for the original.
Paper's figures: 94.3% test accuracy for the original schedule (Smith et al. section 5.2, the
comparison with the increased-momentum run). The accounts cited give no update count for it;
lbt's plan: 10,000,000 / 128 = 78,125 updates.
lbt's assumptions: no weight decay on BN and bias parameters (optimizer.decay_bn_and_bias =
False); global microbatch M = 128; padded-crop + flip augmentation (lbt.data.preprocess).
This file is the shared base of every cifar10_wrn16_4_* recipe (lbt.config.sibling_config).

Command:
  lbt train --config configs/cifar10_wrn16_4_decay_lr.py --workdir /tmp/wrn_decay_lr
  lbt plan --config configs/cifar10_wrn16_4_decay_lr.py    # phases, steps, plan.png

Hardware: designed for one host with 8 accelerators (e.g. a TPU v3-8/v4-8 or 8 GPUs): the global
microbatch M = 128 is 16 per device; larger B is reached by accumulating k = B / M microbatches,
so any device count dividing 128 works (elastic), only the wall-clock changes. Not timed here
(no accelerator and no CIFAR-10 data on the machine these recipes were written on).

Expected: ~94.3% test accuracy (the paper's figure above; not run here).
Expected updates: 78,125 optimizer steps (ceil(10,000,000 / 128)).
"""

from lbt.config import base_config


def get_config():
    config = base_config()
    config.name = "cifar10_wrn16_4_decay_lr"
    config.dataset.name = "cifar10"
    config.model.name = "wrn16_4"
    config.model.ghost_batch_size = 128
    config.optimizer.name = "nesterov"  # Holt & Sievert 2021; Zagoruyko & Komodakis 2016
    config.optimizer.weight_decay = 5e-4
    config.train.global_microbatch = 128
    config.train.eval_every_epochs = 5.0

    s = config.schedule
    s.epochs = 200.0
    s.base_lr = 0.1
    s.momentum = 0.9
    s.global_batch = 128
    s.lr.name = "step"
    s.lr.milestones = (60.0, 120.0, 160.0)
    s.lr.factor = 5.0
    s.lr.warmup_epochs = 0.0
    s.batch.mode = "decay_lr"
    s.batch.max_global_batch = 0
    return config
