r"""Reproduction suite base config: 10k real MNIST digits (.npz), decay the LR vs increase the batch.

`lbt reproduce --suite mnist` trains this config three times per seed with `schedule.batch.mode`
= decay_lr, increase_batch and hybrid (everything else equal): ε0 = 0.4, m = 0.9, B0 = 32,
weight decay 1e-3, factor 5 at 30% / 60% / 80% of the epochs (the paper's CIFAR-10 proportions).
N = 8,000 train / 2,000 test (dataset.test_fraction = 0.2), so B_max = N/10 = 800.

  decay_lr:       B = 32 throughout, ε = 0.4 -> 0.08 -> 0.016 -> 0.0032
  increase_batch: ε = 0.4 throughout, B = 32 -> 160 -> 800 -> 4,000
  hybrid:         B = 32 -> 160 -> 800 -> 800 (B_max), ε = 0.4 -> 0.4 -> 0.4 -> 0.08

Command:
  lbt reproduce --suite mnist --seeds 3 [--data ../shared/data/mnist10k.npz]
  lbt train --config configs/reproduce_mnist.py --config.dataset.path=mnist10k.npz
  lbt plan --config configs/reproduce_mnist.py --config.dataset.path=mnist10k.npz

Data: any .npz with `images` [N, H, W] and `labels` [N] (dataset.name = 'npz'); the suite's
default is ../shared/data/mnist10k.npz next to the repository (10,000 real MNIST digits, rows
sorted by class; the loader's train/test split is a seeded shuffle). Users never depend on it.
Hardware: any CPU; `lbt reproduce` uses 1 CPU device by default (--num_cpu_devices to change
it); M = 32, ghost batch 16.
Expected (measured 2026-11-23, 2-core CPU shared with other jobs, 1 device, 3 seeds; see
docs/reproduction.md): final test accuracy decay_lr 97.67 ± 0.08 %, increase_batch 97.42 ± 0.13 %,
hybrid 97.50 ± 0.22 % (2,000 test examples: one is 0.05 pp); 2,500 / 924 (0.370) / 940 (0.376)
optimizer steps; about 2 min per run, ~17 min for the suite.
Paper: none; not a run of any paper. A small-scale check of Smith et al. 2018's claim on real
MNIST digits; the model, data and schedule are lbt's (the milestone proportions follow the
paper's CIFAR-10 schedule).
"""

from lbt.config import base_config


def get_config():
    config = base_config()
    config.name = "reproduce_mnist"
    config.dataset.name = "npz"
    config.dataset.path = ""  # set by lbt reproduce --data, or --config.dataset.path=FILE.npz
    config.dataset.test_fraction = 0.2
    config.model.name = "cnn"
    config.model.width = 32
    config.model.ghost_batch_size = 16
    config.optimizer.name = "momentum"
    config.optimizer.weight_decay = 1e-3
    config.train.global_microbatch = 32
    config.train.eval_every_epochs = 0.5
    config.train.log_every_steps = 50
    # the adaptive plan decides from the noise scale: measure it on every step (as on GPU/TPU;
    # lbt's CPU default is every fourth step), as when docs/reproduction.md was measured
    config.train.noise_scale_every = 1

    s = config.schedule
    s.epochs = 10.0
    s.base_lr = 0.4
    s.momentum = 0.9
    s.global_batch = 32
    s.lr.name = "step"
    s.lr.milestones = (3.0, 6.0, 8.0)
    s.lr.factor = 5.0
    s.batch.mode = "decay_lr"
    s.batch.max_global_batch = 0  # hybrid: N/10 = 800
    return config
