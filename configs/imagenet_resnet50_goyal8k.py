r"""ImageNet, ResNet-50 v1.5, batch 8192 for 90 epochs (Goyal et al. 2017, "Accurate, Large
Minibatch SGD: Training ImageNet in 1 Hour", the kn = 8k run of table 1).

Paper (Goyal et al. 2017): momentum SGD (m = 0.9), linear scaling ε = 0.1 · B / 256 = 3.2, gradual
warmup from ε = 0.1 to 3.2 over the first 5 epochs, ε ÷ 10 at epochs 30, 60 and 80, 90 epochs,
weight decay 1e-4, zero-γ init of each residual block's last BN, BN over 32 examples (their
per-GPU batch: ghost batch 32), no label smoothing.
Paper's figures: 76.26% ± 0.09 top-1 at 8k, against 76.40% ± 0.12 for the 256 baseline (table 1,
reported as top-1 error 23.74 and 23.60). Goyal et al. give no update count; 90 epochs at
B = 8,192 are 90 · 1,281,167 / 8,192 = 14,075.3.
lbt's assumptions: weight decay not applied to BN γ/β or biases (optimizer.decay_bn_and_bias =
False); bfloat16 compute; ResNet-50 v1.5 (stride on the 3x3 conv, as torchvision); M = 8,192.
This is not a run of Smith et al. 2018; it is the reference of imagenet_resnet50_increase_batch.

Command:
  lbt train --config configs/imagenet_resnet50_goyal8k.py --workdir /gcs/bucket/resnet50_goyal8k
  lbt plan --config configs/imagenet_resnet50_goyal8k.py    # phases, steps, plan.png

Hardware: designed for 256 accelerators (TPU v3-256 cores = 128 chips, a TPU v4-256 slice, or
Goyal's 256 P100s / 32x 8-GPU hosts): the global microbatch M = 8192 is b = 32 per device, one
microbatch per step (k = 1), so ghost batch G = 32 is device-local. On 128 devices (v4-128,
128 GPUs) b = 64 holds two ghost groups; on 64x A100 b = 128 (four groups, bf16 fits in 40 GB).
Fewer devices: keep M and G (the training semantics do not change), only the wall clock does.

Expected: ~76.3% top-1 (Goyal et al.'s figure above; not run here).
Expected updates: 90 · N / 8,192 = 14,075.3; `lbt plan`: 14,076 optimizer steps (the last step
overshoots the 90 epochs by a partial batch).
"""

from lbt.config import base_config


def get_config():
    config = base_config()
    config.name = "imagenet_resnet50_goyal8k"
    config.dataset.name = "imagenet2012"
    config.dataset.image_size = 224
    config.model.name = "resnet50"
    config.model.ghost_batch_size = 32
    config.model.bn_momentum = 0.9
    config.model.bn_epsilon = 1e-5
    config.model.dtype = "bfloat16"
    config.model.zero_init_last_bn = True
    config.optimizer.name = "momentum"
    config.optimizer.weight_decay = 1e-4
    config.optimizer.decay_bn_and_bias = False
    config.train.global_microbatch = 8192
    config.train.label_smoothing = 0.0
    config.train.eval_every_epochs = 5.0
    config.checkpoint.every_epochs = 1.0
    config.checkpoint.every_minutes = 30.0

    s = config.schedule
    s.epochs = 90.0
    s.base_lr = 3.2  # 0.1 * 8192 / 256
    s.momentum = 0.9
    s.global_batch = 8192
    s.lr.name = "step"
    s.lr.milestones = (30.0, 60.0, 80.0)
    s.lr.factor = 10.0
    s.lr.warmup_epochs = 5.0
    s.lr.warmup_start_factor = 256 / 8192  # from the small-batch ε = 0.1
    s.batch.mode = "decay_lr"
    s.batch.max_global_batch = 0
    return config
