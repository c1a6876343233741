r"""ImageNet, Inception-ResNet-V2: the decaying-LR reference of Smith, Kindermans, Ying & Le, ICLR
2018, "Don't Decay the Learning Rate, Increase the Batch Size" (arXiv:1711.00489), section
"Training ImageNet in 2500 parameter updates", and the shared base of every
imagenet_inception_resnet_v2_* recipe (lbt.config.sibling_config).

Paper: initial ε = 3.0, momentum 0.9, B = 8,192, ghost batch 32, and the learning rate decayed at
the schedule's steps; the run the paper's increasing-batch run (a) (imagenet_inception_resnet_v2_
ghost32_increase_batch) is measured against: "from 14,000 to below 6,000" updates.
Paper's figures: about 14,000 updates (the quote above); lbt's plan: 14,076 = ceil(90 N / 8,192),
which matches. The accounts cited give no accuracy for this run.
lbt's assumptions: 90 epochs with ε ÷ 10 at epochs 30, 60 and 80 (the accounts give neither the
epochs nor the decay steps; this is Goyal et al. 2017's ImageNet schedule); a 5-epoch linear warmup from
ε/32 (Goyal et al. 2017; it changes no update count, schedule.lr.warmup_epochs=0 drops it);
momentum SGD (not Nesterov); weight decay 4e-5 (TF-slim's Inception default), not on BN/bias;
label smoothing 0.1; BN ε = 1e-3 (TF-slim, timm); 299x299 crops; bfloat16 compute; M = 8,192.

Command:
  lbt train --config configs/imagenet_inception_resnet_v2_decay_lr.py --workdir /gcs/bucket/irv2_decay_lr
  lbt plan --config configs/imagenet_inception_resnet_v2_decay_lr.py    # phases, steps, plan.png

Hardware: designed for 256 accelerators (TPU v3-256 cores / v4-256): the
global microbatch M = 8,192 is b = 32 images of 299x299 per device (= the ghost batch, so BN
needs no communication), one microbatch per step (k = 1). 128 devices: b = 64 (two ghost groups);
64x A100 80 GB: b = 128 in bfloat16.

Expected: not run here (no ImageNet on this machine); the accounts cited give no accuracy.
Expected updates: the paper's "14,000"; `lbt plan`: 14,076 optimizer steps (90 N / 8,192 =
14,075.3, the last step overshooting the 90 epochs).
"""

from lbt.config import base_config


def get_config():
    config = base_config()
    config.name = "imagenet_inception_resnet_v2_decay_lr"
    config.dataset.name = "imagenet2012"
    config.dataset.image_size = 299
    config.model.name = "inception_resnet_v2"
    config.model.ghost_batch_size = 32
    config.model.bn_momentum = 0.9
    config.model.bn_epsilon = 1e-3
    config.model.dtype = "bfloat16"
    config.model.zero_init_last_bn = False
    config.optimizer.name = "momentum"
    config.optimizer.weight_decay = 4e-5
    config.optimizer.decay_bn_and_bias = False
    config.train.global_microbatch = 8192
    config.train.label_smoothing = 0.1
    config.train.eval_every_epochs = 5.0
    config.checkpoint.every_epochs = 1.0
    config.checkpoint.every_minutes = 30.0

    s = config.schedule
    s.epochs = 90.0  # lbt's assumption
    s.base_lr = 3.0
    s.momentum = 0.9
    s.global_batch = 8192
    s.lr.name = "step"
    s.lr.milestones = (30.0, 60.0, 80.0)  # lbt's assumption
    s.lr.factor = 10.0  # lbt's assumption
    s.lr.warmup_epochs = 5.0  # lbt's addition (Goyal et al. 2017)
    s.lr.warmup_start_factor = 1 / 32
    s.batch.mode = "decay_lr"
    s.batch.max_global_batch = 0
    return config
