"""What scale-out (design §7) changes for a stage: the accelerator itself (FSDP2, train.mixed_precision),
gradient checkpointing, full weights for a pass that only some processes run (sampling, rank 0's
evals), and full tensors for checkpoints and final/. Without sharding every function here is the identity.

accelerate 1.15 turns FSDP (and DeepSpeed) on only for accelerator devices: on CPU it silently runs
DDP instead (its AcceleratorState keeps MULTI_CPU). torch's FSDP2 (`fully_shard`) does run on CPU
over gloo, so `make_accelerator` hands accelerate's own FSDP2 path the CPU state it refused, which is
how the FSDP tests run here. FSDP1 and DeepSpeed cannot run on CPU: they are refused with the reason
(docs/scaling.md)."""

from __future__ import annotations

import contextlib
import dataclasses
import os

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor, distribute_tensor

from rlhfkit.errors import ConfigError


def make_accelerator(cfg) -> Accelerator:
    """The stage's Accelerator, with train.mixed_precision; FSDP2 on CPU when accelerate was asked for
    FSDP (ACCELERATE_USE_FSDP, set by `accelerate launch --config_file configs/accelerate/fsdp.yaml`)."""
    cpu = not torch.cuda.is_available()
    check_launch(cfg, cpu)
    # Each stage sets its own precision and plugin, also when several stages run in one process.
    AcceleratorState._reset_state()
    if cpu and PartialState._shared_state.get("distributed_type") == DistributedType.FSDP:
        PartialState._shared_state["distributed_type"] = DistributedType.MULTI_CPU
    accelerator = Accelerator(cpu=cpu, mixed_precision=cfg.train.mixed_precision)
    if _flag("ACCELERATE_USE_FSDP") and accelerator.distributed_type == DistributedType.MULTI_CPU:
        plugin = FullyShardedDataParallelPlugin()
        if cfg.train.mixed_precision != "no":
            plugin.set_mixed_precision(cfg.train.mixed_precision)
            # accelerate also casts the root's outputs to bf16; PPO's root (PolicyWithValue) returns
            # log-probs it computed in float32, which that rounds to bf16 (a ~0.03 step at -5 nats)
            # while the reference's stay float32: iteration 1's KL read 0.0056 nats, not 0
            # (docs/scaling.md section 2.4).
            policy = plugin.mixed_precision_policy
            plugin.mixed_precision_policy = dataclasses.replace(policy, output_dtype=None)
        # accelerate keeps FSDP for accelerator devices; its FSDP2 path runs on CPU given the state.
        accelerator.state.fsdp_plugin = plugin
        accelerator.state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return accelerator


def check_launch(cfg, cpu: bool) -> None:
    """Refuse a launch whose engine or precision would silently not be what was asked for."""
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if launched not in ("no", cfg.train.mixed_precision):
        raise ConfigError(
            f"the launcher asks for mixed precision {launched}, the config for train.mixed_precision="
            f"{cfg.train.mixed_precision}: set train.mixed_precision={launched} (rlhfkit reads the config)"
        )
    if cpu and _flag("ACCELERATE_USE_DEEPSPEED"):
        raise ConfigError(
            "DeepSpeed needs a GPU: accelerate ignores it on CPU (it would run DDP, nothing sharded); "
            "use configs/accelerate/fsdp.yaml on CPU (docs/scaling.md)"
        )
    if not _flag("ACCELERATE_USE_FSDP"):
        return
    if cpu and os.environ.get("FSDP_VERSION", "1") != "2":
        raise ConfigError(
            "FSDP1 cannot run on CPU (torch: 'Inconsistent compute device and `device_id`: cpu vs "
            "cpu:0'): use FSDP2, configs/accelerate/fsdp.yaml (fsdp_version: 2)"
        )
    if getattr(getattr(cfg, "sft", None), "save_merged", False):
        raise ConfigError(
            "sft.save_merged=true is not supported under FSDP: merge final/ after the run "
            "(peft's merge_and_unload)"
        )


def use_gradient_checkpointing(model: torch.nn.Module, on: bool) -> None:
    """train.gradient_checkpointing: recompute each block's activations in the backward pass instead
    of keeping them (non-reentrant: it works with frozen LoRA bases and under FSDP)."""
    if on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


@torch.no_grad()
def like_sharded_policy(accelerator, frozen: torch.nn.Module | None) -> torch.nn.Module | None:
    """A frozen reference copy (never sharded) that computes as the policy does. Under FSDP with
    train.mixed_precision=bf16 the policy's forwards run on its weights gathered in bfloat16 (FSDP's
    param_dtype), so the copy's parameters become bfloat16 too (its buffers stay, as FSDP leaves the
    policy's); the float32 copy put 0.0033 nats of bf16 rounding into PPO's iteration-1 KL
    (docs/scaling.md section 2.4). Without FSDP the policy computes from float32 weights under
    autocast, and so does the copy."""
    if frozen is not None and is_sharded(accelerator) and accelerator.mixed_precision == "bf16":
        for param in frozen.parameters():
            param.data = param.data.to(torch.bfloat16)
    return frozen


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() == "true"


def is_sharded(accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.FSDP


@contextlib.contextmanager
def full_weights(accelerator, model: torch.nn.Module):
    """Every process gathers the full parameters and keeps them until the block ends, so a forward
    needs no collective: one process alone may run it (rank 0's evals), and processes may run different
    numbers of forwards (sampling stops when a process's rows have all ended). Enter it on every process."""
    if not is_sharded(accelerator):
        yield model
        return
    modules = [m for m in accelerator.unwrap_model(model).modules() if isinstance(m, FSDPModule)]
    # The root settles its own setting at its first forward, which may come inside this block and on
    # rank 0 alone (its evals): settle it now, on every process, so that it is the one restored.
    modules[0]._get_fsdp_state()._lazy_init()
    settings = [_reshard_setting(module) for module in modules]
    for module in modules:
        module.unshard()
        module.set_reshard_after_forward(False, recurse=False)
    try:
        yield model
    finally:
        accelerator.wait_for_everyone()
        for module, setting in zip(modules, settings):
            module.reshard()
            _restore_reshard_setting(module, setting)


def _reshard_setting(module: FSDPModule) -> tuple:
    """A module's reshard-after-forward setting (torch has no getter), restored as it was after the block.
    It differs between units: accelerate keeps the final norm's unit gathered, and the root (the prepared
    model) stays gathered after forward (torch's default for a root). The RM applies its `score` head, a
    parameter of the root, to the hidden states after the forward (models/reward.py: rewards_at_last_token):
    a root resharded after forward hands it a shard ("aten.mm.default got mixed torch.Tensor and DTensor")."""
    state = module._get_fsdp_state()
    return state._auto_reshard_after_forward, [g.post_forward_mesh_info for g in state._fsdp_param_groups]


def _restore_reshard_setting(module: FSDPModule, setting: tuple) -> None:
    state = module._get_fsdp_state()
    state._auto_reshard_after_forward, infos = setting
    for group, info in zip(state._fsdp_param_groups, infos):
        group.post_forward_mesh_info = info


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a shard (a collective: every process calls it); a plain tensor as is."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def like(param: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """`value` (a whole tensor) laid out as `param`: this process's shard of it under FSDP."""
    if isinstance(param, DTensor) and not isinstance(value, DTensor):
        return distribute_tensor(value.to(param.dtype), param.device_mesh, param.placements)
    return value


@torch.no_grad()
def full_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """module.state_dict() with whole tensors (every process calls it under FSDP). A tensor under two
    names (tied input and output embeddings) is gathered once and stays one tensor, so save_pretrained
    drops the tied name as it does for an unsharded model (final/ holds the same keys)."""
    whole: dict[int, torch.Tensor] = {}
    state = module.state_dict(keep_vars=True)
    for value in state.values():
        if id(value) not in whole:
            whole[id(value)] = full_tensor(value).detach()
    return {name: whole[id(value)] for name, value in state.items()}


def full_optimizer_state(optimizer) -> dict:
    """optimizer.state_dict() with whole tensors: the checkpoint of a sharded run is the unsharded
    run's, so it resumes under either."""
    state = optimizer.state_dict()
    state["state"] = {
        index: {key: full_tensor(value) for key, value in entry.items()}
        for index, entry in state["state"].items()
    }
    return state


def load_optimizer_state(optimizer, state: dict) -> None:
    """Load a full_optimizer_state, sharding each tensor as its parameter is."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, entry in state["state"].items():
        param = params[int(index)]
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.shape == param.shape:
                entry[key] = like(param, value)
    optimizer.load_state_dict(state)
