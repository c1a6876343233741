"""Config schema, defaults, loading of ``configs/*.py`` files, overrides and validation.

Configs are ``ml_collections.ConfigDict`` objects. A config file defines ``get_config()``. The
schema is :func:`base_config` (which is also the embedded default: digits on a small CNN); a
config file or an override may only set keys that exist there, so a typo fails fast with the
name of the field and the valid keys.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ml_collections

from lbt.errors import ConfigError

if TYPE_CHECKING:
    from lbt.schedules.plan import Plan

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "lars", "lamb")
#: Optimizers whose update uses ``schedule.momentum`` as heavy-ball momentum (optax's trace), so the
#: Plan's m, its g = εN/(B(1 - m)) and the B ∝ 1/(1 - m) rule describe them. ``sgd`` has no
#: momentum; ``adam``/``lamb`` use m as b1 of a normalised moving average (no 1/(1 - m) gain).
HEAVY_BALL_OPTIMIZERS = ("momentum", "nesterov", "lars")
DTYPES = ("float32", "bfloat16")
NONFINITE_POLICIES = ("stop", "rollback")
GRAD_REDUCTIONS = ("auto", "flat", "per_leaf")


def base_config() -> ml_collections.ConfigDict:
    """The full schema with defaults. With no ``--config``, ``lbt train`` trains exactly this.

    Defaults: scikit-learn digits (offline), a small CNN with ghost BN, momentum SGD, and a batch
    that grows 64 -> 128 -> 256 instead of the LR decaying (Smith et al. 2018).
    """
    from lbt.schedules.plan import default_schedule_config

    c = ml_collections.ConfigDict()
    c.name = "digits"
    c.seed = 0

    c.dataset = ml_collections.ConfigDict()
    c.dataset.name = "digits"  # digits | npz | cifar10 | imagenet2012
    c.dataset.path = ""  # npz: a .npz file with `images` [N,H,W(,C)] and `labels` [N]
    c.dataset.data_dir = ""  # tfds data_dir for cifar10 / imagenet2012 ("" = tfds default)
    c.dataset.test_fraction = 0.2  # digits / npz: held-out fraction (deterministic split)
    c.dataset.split_seed = 0  # digits / npz: seed of the train/test split
    c.dataset.image_size = 0  # imagenet2012: crop size (0 = model default, 224 or 299)
    c.dataset.on_corrupt = "error"  # error | skip: what to do with an undecodable example
    c.dataset.augment = True  # random crop/flip where the dataset defines one
    c.dataset.decode_workers = 0  # cifar10 / imagenet2012: decode processes (0 = auto: one per core for ImageNet)
    c.dataset.decoder = "auto"  # imagenet2012 training crops: auto | turbo (lbt[jpeg]) | pil (docs/data.md)

    c.model = ml_collections.ConfigDict()
    c.model.name = "cnn"  # cnn | resnet18 | resnet50 | wrn16_4 | inception_resnet_v2
    c.model.width = 32  # cnn: channels of the first conv
    c.model.ghost_batch_size = 16  # G: BN statistics over groups of G consecutive examples; 0 = M
    c.model.bn_momentum = 0.9  # EMA decay of the running statistics used at eval
    c.model.bn_epsilon = 1e-5
    c.model.dtype = "float32"  # float32 | bfloat16 (compute); params and accumulation stay f32
    c.model.zero_init_last_bn = False  # Goyal et al. 2017: last BN scale of a residual block = 0

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "momentum"  # sgd | momentum | nesterov | adam | lars | lamb
    c.optimizer.weight_decay = 0.0
    c.optimizer.decay_bn_and_bias = False  # False: weight decay masks out BN and bias params
    c.optimizer.b2 = 0.999  # adam / lamb (b1 is the schedule's momentum)
    c.optimizer.eps = 1e-8  # adam / lamb
    c.optimizer.trust_coefficient = 0.001  # lars

    c.train = ml_collections.ConfigDict()
    c.train.global_microbatch = 64  # M, fixed for the run; B = k * M
    c.train.label_smoothing = 0.0
    c.train.eval_every_epochs = 5.0  # 0 = only at the end
    c.train.log_every_steps = 10  # metrics read from the devices, and a TensorBoard point, every N steps
    c.train.on_nonfinite = "stop"  # stop | rollback
    c.train.max_rollbacks = 3  # rollback: stop with an error after this many rollbacks in one run
    c.train.max_skipped_fraction = 0.05  # rollback: ... or once this fraction of the run's examples is skipped
    c.train.progress = True  # progress bar on stderr
    # auto: flat on CPU (one rendezvous), per_leaf on GPU/TPU (each leaf's all-reduce can start early)
    c.train.grad_reduction = "auto"  # auto | flat | per_leaf
    c.train.steps_in_flight = -1  # steps dispatched ahead of the host: -1 auto (1 on CPU, unbounded else)
    c.train.device_prefetch = 2  # microbatches transferred to the devices ahead of use
    c.train.peak_flops = 0.0  # FLOP/s of one device for MFU; 0 = the table in lbt/train/perf.py
    c.train.profile_steps = ()  # (start, count): jax.profiler trace of those steps to WORKDIR/profile
    # gradient noise scale B_simple (McCandlish et al. 2018) measured in the step's one reduction
    c.train.measure_noise_scale = True
    c.train.noise_scale_ema = 0.99  # EMA factor of the |G|^2 and tr(Σ) estimates (bias-corrected)
    c.train.noise_scale_every = 0  # measure on every N-th step; 0 = auto (4 on CPU, 1 on GPU/TPU)

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_epochs = 0.0  # 0 = off (any of the three may trigger)
    c.checkpoint.every_examples = 0
    c.checkpoint.every_minutes = 0.0
    c.checkpoint.keep = 3
    c.checkpoint.digest = True  # SHA-256 of the state at each save, verified on restore (docs/checkpointing.md)

    c.schedule = default_schedule_config()
    s = c.schedule
    s.epochs = 30.0
    s.base_lr = 0.1
    s.momentum = 0.9
    s.global_batch = 64
    s.lr.name = "step"
    s.lr.milestones = (10.0, 20.0)
    s.lr.factor = 2.0
    s.batch.mode = "increase_batch"
    return c


# ---------------------------------------------------------------------------------------------
# Loading and overrides


def load_config(path: str | None, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Load ``path`` (a file defining ``get_config()``; ``None`` = the embedded default) and apply
    ``overrides`` of the form ``--config.a.b=value`` (or ``a.b=value``)."""
    if path is None:
        config = base_config()
    else:
        if not Path(path).is_file():
            raise ConfigError("file", f"no config file at {path!r}; pass an existing configs/<name>.py")
        config = _get_config(Path(path))
    check_known_keys(config)
    for item in overrides:
        apply_override(config, item)
    return config


def _get_config(p: Path) -> ml_collections.ConfigDict:
    """Run ``get_config()`` of the config file ``p``.

    Any failure (a syntax error, an exception at import or in ``get_config()``, a result that is not
    a ``ConfigDict``) becomes one :class:`ConfigError` naming the file, the line and the error's first
    line, e.g. ``config.file: configs/x.py line 3: invalid syntax; fix the file``.
    """
    spec = importlib.util.spec_from_file_location(f"lbt_config_{p.stem}", p)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ConfigError:
        raise  # already one line (e.g. from a sibling_config() at import)
    except SyntaxError as e:
        raise ConfigError("file", _syntax_error_line(e, p)) from None
    except Exception as e:
        raise ConfigError("file", f"{_where(e, p)}: {_first_line(e)}; fix the file") from None
    if not hasattr(module, "get_config"):
        raise ConfigError("file", f"{p} defines no get_config(); add one returning a ConfigDict")
    try:
        config = module.get_config()
    except ConfigError:
        raise
    except SyntaxError as e:  # e.g. a sibling_config() of a file with a syntax error reports that file
        raise ConfigError("file", _syntax_error_line(e, p)) from None
    except Exception as e:
        raise ConfigError("file", f"{_where(e, p)}: get_config() raised {_first_line(e)}; fix the file") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(
            "file",
            f"{p}: get_config() returned {type(config).__name__}, not an ml_collections.ConfigDict; "
            "return one, e.g. built from lbt.config.base_config()",
        )
    return config


def _first_line(e: BaseException) -> str:
    """``Type: first line of the message`` (just ``Type`` for an empty message)."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _where(e: BaseException, p: Path) -> str:
    """``p line N`` for the last line of the config file ``p`` in the traceback of ``e`` (else ``p``)."""
    line, target = None, p.resolve()
    for frame, lineno in traceback.walk_tb(e.__traceback__):
        if Path(frame.f_code.co_filename).resolve() == target:
            line = lineno
    return f"{p} line {line}" if line is not None else str(p)


def _syntax_error_line(e: SyntaxError, p: Path) -> str:
    where = str(p) if not e.filename or Path(e.filename).resolve() == p.resolve() else e.filename
    if e.lineno is not None:
        where += f" line {e.lineno}"
    return f"{where}: {e.msg or type(e).__name__}; fix the file"


def sibling_config(this_file: str, name: str) -> ml_collections.ConfigDict:
    """``get_config()`` of the config file ``name``.py next to ``this_file``, so that a recipe
    variant can start from its reference recipe (``sibling_config(__file__, "x_decay_lr")``)."""
    p = Path(this_file).resolve().parent / f"{name}.py"
    if not p.is_file():
        raise ConfigError(
            "file", f"{this_file} builds on {p}, which does not exist; keep the reference recipe next to it"
        )
    return _get_config(p)


def _parse_value(text: str, current: Any, field: str) -> Any:
    if isinstance(current, bool):
        low = text.lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ConfigError(field, f"expected true or false, got {text!r}")
    if isinstance(current, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ConfigError(field, f"cannot parse {text!r} as {type(current).__name__}") from None
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(current, tuple) and isinstance(value, (list, int, float)):
        value = tuple(value) if isinstance(value, list) else (value,)
    if current is not None and not isinstance(value, type(current)):
        raise ConfigError(field, f"expected {type(current).__name__}, got {text!r}; write e.g. {current!r}")
    return value


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(other arguments, overrides)`` of a command line. An override is ``--config.a.b=value`` or,
    as two arguments, ``--config.a.b value`` (joined here; a next argument starting with ``--`` is
    not a value, so ``--config.a.b`` alone is reported by :func:`apply_override`)."""
    rest, overrides = [], []
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--config."):
            rest.append(a)
        elif "=" not in a and i + 1 < len(args) and not args[i + 1].startswith("--"):
            overrides.append(f"{a}={args[i + 1]}")
            i += 1
        else:
            overrides.append(a)
        i += 1
    return rest, overrides


def apply_override(config: ml_collections.ConfigDict, item: str) -> None:
    """Apply one ``--config.a.b=value`` override in place."""
    text = item[2:] if item.startswith("--") else item
    if text.startswith("config."):
        text = text[len("config.") :]
    if "=" not in text:
        raise ConfigError(text, "override needs a value: --config.a.b=value")
    key, value = text.split("=", 1)
    parts = key.split(".")
    node = config
    for i, part in enumerate(parts[:-1]):
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            raise ConfigError(".".join(parts[: i + 1]), _unknown(node, part))
        node = node[part]
    leaf = parts[-1]
    if leaf not in node:
        raise ConfigError(key, _unknown(node, leaf))
    if isinstance(node[leaf], ml_collections.ConfigDict):
        raise ConfigError(
            key, f"is a section; set one of its fields, e.g. --config.{key}.{next(iter(node[leaf].keys()))}=..."
        )
    with node.unlocked():
        node[leaf] = _parse_value(value, node[leaf], key)


def _unknown(node: ml_collections.ConfigDict, key: str) -> str:
    return f"unknown key {key!r}; valid keys here: {', '.join(sorted(node.keys()))}"


def check_known_keys(config: ml_collections.ConfigDict) -> None:
    """Every key of ``config`` must exist in :func:`base_config` (catches typos in config files)."""
    _check_keys(config, base_config(), "")


def _check_keys(node: Any, schema: Any, prefix: str) -> None:
    for key in node.keys():
        field = f"{prefix}{key}"
        if key not in schema:
            raise ConfigError(field, _unknown(schema, key))
        if isinstance(node[key], ml_collections.ConfigDict):
            if not isinstance(schema[key], ml_collections.ConfigDict):
                raise ConfigError(field, "is a value, not a section")
            _check_keys(node[key], schema[key], field + ".")
    if prefix == "":
        for key in schema.keys():
            if key not in node:
                raise ConfigError(key, "missing section; build configs from lbt.config.base_config()")


# ---------------------------------------------------------------------------------------------
# Validation (before any compile)


def validate(config: ml_collections.ConfigDict, *, num_devices: int, num_train: int) -> Plan:
    """Check every field and build the run's :class:`~lbt.schedules.plan.Plan` (once).

    Raises :class:`ConfigError` naming the field and the fix for any invalid value. Needs only
    the device count and the train-set size N, so it runs before any data is loaded.
    """
    from lbt.data.registry import DATASETS
    from lbt.models import MODELS
    from lbt.schedules.plan import make_plan

    check_known_keys(config)
    if config.dataset.name not in DATASETS:
        raise ConfigError(
            "dataset.name", f"unknown dataset {config.dataset.name!r}; choose one of {', '.join(DATASETS)}"
        )
    if config.dataset.decoder not in ("auto", "turbo", "pil"):
        raise ConfigError(
            "dataset.decoder", f"unknown decoder {config.dataset.decoder!r}; choose one of auto, turbo, pil"
        )
    if config.dataset.decode_workers < 0:
        raise ConfigError(
            "dataset.decode_workers",
            f"must be >= 0 (0 = auto: one worker process per core for ImageNet), got {config.dataset.decode_workers}",
        )
    if config.model.name not in MODELS:
        raise ConfigError("model.name", f"unknown model {config.model.name!r}; choose one of {', '.join(MODELS)}")
    if config.optimizer.name not in OPTIMIZERS:
        raise ConfigError(
            "optimizer.name", f"unknown optimizer {config.optimizer.name!r}; choose one of {', '.join(OPTIMIZERS)}"
        )
    _check_optimizer_momentum(config)
    if config.model.dtype not in DTYPES:
        raise ConfigError("model.dtype", f"unknown dtype {config.model.dtype!r}; choose float32 or bfloat16")
    if config.train.on_nonfinite not in NONFINITE_POLICIES:
        raise ConfigError(
            "train.on_nonfinite", f"unknown policy {config.train.on_nonfinite!r}; choose stop or rollback"
        )
    if config.train.max_rollbacks < 0:
        raise ConfigError("train.max_rollbacks", f"must be >= 0, got {config.train.max_rollbacks}; e.g. 3")
    if not 0.0 <= config.train.max_skipped_fraction <= 1.0:
        raise ConfigError(
            "train.max_skipped_fraction", f"must be in [0, 1], got {config.train.max_skipped_fraction}; e.g. 0.05"
        )
    if config.optimizer.weight_decay < 0:
        raise ConfigError("optimizer.weight_decay", f"must be >= 0, got {config.optimizer.weight_decay}")
    if not 0.0 <= config.train.label_smoothing < 1.0:
        raise ConfigError("train.label_smoothing", f"must be in [0, 1), got {config.train.label_smoothing}")
    if not 0.0 <= config.model.bn_momentum < 1.0:
        raise ConfigError("model.bn_momentum", f"must be in [0, 1), got {config.model.bn_momentum}")
    if config.train.log_every_steps < 1:
        raise ConfigError("train.log_every_steps", f"must be >= 1, got {config.train.log_every_steps}")
    _check_loop_fields(config)
    m = config.train.global_microbatch
    if m <= 0:
        raise ConfigError("train.global_microbatch", f"must be positive, got {m}")
    if m % num_devices:
        lo = max(num_devices, m // num_devices * num_devices)
        raise ConfigError(
            "train.global_microbatch",
            f"{m} is not divisible by the {num_devices} devices; use a multiple of {num_devices} such as {lo} or {lo + num_devices}",
        )
    g = config.model.ghost_batch_size
    if g < 0:
        raise ConfigError("model.ghost_batch_size", f"must be >= 0 (0 = the whole global microbatch), got {g}")
    if g:
        from lbt.parallel.ghost_bn import ghost_layout

        ghost_layout(g, m, num_devices)  # raises with the fix
    if config.checkpoint.keep < 1:
        raise ConfigError("checkpoint.keep", f"must be >= 1, got {config.checkpoint.keep}")
    for f in ("every_epochs", "every_examples", "every_minutes"):
        if config.checkpoint[f] < 0:
            raise ConfigError(f"checkpoint.{f}", f"must be >= 0 (0 = off), got {config.checkpoint[f]}")
    return make_plan(config, num_train)


def _check_loop_fields(config: ml_collections.ConfigDict) -> None:
    """The fields of how the loop runs (reduction layout, dispatch, prefetch, MFU, profiling, the
    noise-scale measurement)."""
    if config.train.grad_reduction not in GRAD_REDUCTIONS:
        raise ConfigError(
            "train.grad_reduction", f"unknown layout {config.train.grad_reduction!r}; choose auto, flat or per_leaf"
        )
    if config.train.steps_in_flight < -1:
        raise ConfigError(
            "train.steps_in_flight", f"must be -1 (auto), 0 (unbounded) or >= 1, got {config.train.steps_in_flight}"
        )
    if config.train.device_prefetch < 0:
        raise ConfigError("train.device_prefetch", f"must be >= 0, got {config.train.device_prefetch}; e.g. 2")
    if config.train.peak_flops < 0:
        raise ConfigError("train.peak_flops", f"must be >= 0 (0 = the built-in table), got {config.train.peak_flops}")
    beta = config.train.noise_scale_ema
    if not (isinstance(beta, (int, float)) and 0.0 <= beta < 1.0):
        raise ConfigError("train.noise_scale_ema", f"must be in [0, 1), got {beta!r}; e.g. 0.99")
    every = config.train.noise_scale_every
    if not (isinstance(every, int) and not isinstance(every, bool) and 0 <= every <= 1_000_000):
        raise ConfigError(
            "train.noise_scale_every",
            f"must be an integer in [0, 1000000] (0 = auto), got {every!r}; e.g. 1 for every step",
        )
    factor = config.schedule.batch.regime_factor
    if not (isinstance(factor, (int, float)) and factor >= 0 and factor != float("inf")):
        raise ConfigError(
            "schedule.batch.regime_factor",
            f"must be a finite number >= 0 (0 = no regime warning), got {factor!r}; e.g. 1.0",
        )
    ps = tuple(config.train.profile_steps)
    if ps and (len(ps) != 2 or not all(isinstance(v, int) and v >= 1 for v in ps)):
        raise ConfigError(
            "train.profile_steps", f"must be () or (start, count) with both >= 1, got {ps!r}; e.g. (20, 5)"
        )


def _check_optimizer_momentum(config: ml_collections.ConfigDict) -> None:
    """The Plan's momentum m (and with it g and any B ∝ 1/(1 - m) growth) must be what the
    optimizer applies: ``sgd`` ignores m; ``adam``/``lamb`` take it as b1 of a normalised moving
    average, where raising it does not scale the step by 1/(1 - m)."""
    name, s = config.optimizer.name, config.schedule
    ms = s.get("momentum_schedule")
    stepped = ms is not None and bool(tuple(ms.get("milestones", ()) or ()))
    if s.batch.mode == "increase_momentum":
        grows = "schedule.batch.mode='increase_momentum'"
    elif stepped:
        grows = f"schedule.momentum_schedule (values {tuple(ms['values'])!r})"
    else:
        grows = ""
    m = s.momentum
    if name == "sgd" and (grows or (isinstance(m, (int, float)) and m > 0)):
        what = grows or f"schedule.momentum={m!r}"
        raise ConfigError(
            "optimizer.name",
            f"'sgd' has no momentum, but {what} makes the plan's m and noise scale g assume one; "
            "use optimizer.name='momentum' (or 'nesterov'), or set schedule.momentum=0.0 with a constant m",
        )
    if name in ("adam", "lamb") and grows:
        raise ConfigError(
            "optimizer.name",
            f"{name!r} uses schedule.momentum as b1 of a normalised moving average, so {grows} (B ∝ 1/(1 - m)) "
            "would not keep the noise scale; use optimizer.name='momentum', 'nesterov' or 'lars', or keep m constant",
        )


def config_hash(config: ml_collections.ConfigDict) -> str:
    """A stable short hash of the whole config (stored in checkpoint metadata)."""
    text = json.dumps(config.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), sort_keys=True, indent=2, default=str)


def from_json(stored: str | dict) -> ml_collections.ConfigDict:
    """The config of a run from its JSON form (``config.json``, or a checkpoint's ``meta["config"]``).

    :func:`base_config` with every stored value set (lists become tuples where the schema has a
    tuple), so ``to_json(from_json(to_json(c))) == to_json(c)``. Fields the stored config lacks
    (saved by an older lbt) keep their defaults; a field the schema lacks raises :class:`ConfigError`.
    """
    config = base_config()
    _assign(config, json.loads(stored) if isinstance(stored, str) else stored, "")
    return config


def _assign(node: ml_collections.ConfigDict, values: dict, prefix: str) -> None:
    for key, value in values.items():
        field = f"{prefix}{key}"
        if key not in node:
            raise ConfigError(field, _unknown(node, key))
        if isinstance(node[key], ml_collections.ConfigDict):
            if not isinstance(value, dict):
                raise ConfigError(field, "is a section in this lbt, but a value in the stored config")
            _assign(node[key], value, field + ".")
            continue
        if isinstance(node[key], tuple) and isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        with node.unlocked():
            node[key] = value
