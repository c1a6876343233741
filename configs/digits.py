"""The embedded default: scikit-learn digits on a small CNN with ghost BN and a growing batch.

Command:   lbt train                      (same as: lbt train --config configs/digits.py)
Hardware:  any CPU; 8 simulated devices (--num_cpu_devices), 2 cores are enough.
Expected:  ~99% test accuracy (>= 95% guaranteed by tests/test_cli_e2e.py) in ~20 s wall on a
           2-core machine; 394 optimizer steps over 30 epochs (B = 64 -> 128 -> 256 at epochs
           10 and 20, where a decay-LR run would halve the LR; 674 steps with decay_lr).
Data:      1,797 8x8 digits that ship with scikit-learn, split 1,438 train / 359 test
           (deterministic, dataset.split_seed).
Paper:     none; not a run of any paper. lbt's own small demo of Smith et al. 2018's rule
           (multiply B where a step schedule would divide ε); every setting is lbt's. The last
           phase's B = 256 exceeds N/10 = 143.8, so `lbt plan` and `lbt train` warn that
           εN/(B(1-m)) overstates the exact noise scale there by 22%.
"""

from lbt.config import base_config


def get_config():
    return base_config()
