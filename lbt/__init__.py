"""lbt: large-batch training for JAX.

Grow the batch instead of decaying the learning rate (Smith et al., ICLR 2018), with a fixed
global microbatch, local gradient accumulation, one all-reduce per optimizer step and ghost BN.
"""

__version__ = "0.1.0"
