"""lbt: large-batch training for JAX.

Grow the batch instead of decaying the learning rate (Smith et al., ICLR 2018), with a fixed
global microbatch, local gradient accumulation, one all-reduce per optimizer step and ghost BN.
"""

__version__ = "0.1.0"


def load(workdir, step=None, *, devices=None):
    """``model, variables, config = lbt.load(workdir)``: the model of the checkpoint at ``step``
    (None: the newest good one) of the run in ``workdir`` (a path or ``gs://...``), its variables
    replicated over ``devices`` (default: all; any count, also one other than the run's), and the
    run's resolved config, ready for ``model.apply(variables, images, train=False)``.

    Imports JAX (set up devices first, e.g. ``lbt.runtime.setup``). A bad workdir or step raises
    :class:`lbt.runtime.SetupError`; an unusable checkpoint :class:`lbt.errors.CheckpointError`.
    See docs/checkpointing.md, "Using a trained model".
    """
    from lbt.train.trained import load as _load

    return _load(workdir, step, devices=devices)
