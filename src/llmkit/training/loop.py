"""The one training loop.

Pretraining, full finetuning, LoRA, frozen layers, classifier heads and DPO all run here; they
differ in the batches they feed (`batches`), the loss they compute (`loss_fn`), which
parameters require grad, and what a checkpoint keeps (`trainable_only`). Single process vs
`torchrun` (DDP or FSDP2) is a setting, not another loop.

Resumability is exact: a checkpoint holds the weights, the optimizer state, the step/token
counters, the RNG state and the data position, and is taken only at optimizer-step
boundaries, so an interrupted run that resumes reproduces the uninterrupted loss curve bit for
bit on CPU. The loop gathers that state; `checkpoint.py` writes and reads the files (a step
directory appears only once complete, `latest` is switched after it, old ones are rotated).
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
import torch.distributed as dist

from llmkit.errors import LLMKitError
from llmkit.hardware import for_device_name, measure_cpu_peak, tune_cpu_allocator
from llmkit.training.optim import lr_at, make_optimizer


# The auto warmup (TrainConfig.warmup_for): this fraction of the run's steps, capped.
AUTO_WARMUP_RATIO = 0.05
AUTO_WARMUP_MAX = 100


@dataclass
class TrainConfig:
    """Settings of the training loop (shared by every recipe; the output directory is the
    recipe's `--out`).

    Args:
        max_steps: stop after this many optimizer steps.
        max_tokens: stop after this many training tokens (all processes together).
        max_time: stop after this many seconds of training.
        micro_batch_size: sequences per forward pass per process.
        grad_accum: micro-batches per optimizer step (global batch = micro * accum * processes).
        lr: peak learning rate (a recipe may leave it unset to pick one by method).
        min_lr_ratio: cosine decay ends at this fraction of the peak.
        warmup_steps: linear warmup steps (default: auto, 5% of the run's steps, at least 1 and at
            most 100; see warmup_for).
        weight_decay: AdamW decay, applied to matrices only.
        beta1: AdamW beta1.
        beta2: AdamW beta2.
        grad_clip: clip the global gradient norm to this (0 = off).
        precision: auto, fp32, bf16 or fp16 (autocast; auto = bf16 where supported).
        compile: torch.compile the model together with the loss in one process (one graph per
            micro-batch's forward; the model alone under DDP / FSDP), and the model for evaluation.
        activation_checkpointing: recompute block activations in backward to save memory.
        eval_every: evaluate every N steps (0 = only at the end).
        log_every: log every N steps.
        save_every: checkpoint every N steps (0 = only at the end and on a signal).
        keep_last: step checkpoints to keep (0 = all).
        seed: seed for the model init, data order and dropout.
        resume: auto (latest checkpoint in out_dir, if any), none, or a checkpoint directory.
        distributed: auto, none, ddp or fsdp (under torchrun; auto = ddp with >1 process).
        device: auto, cpu, cuda, cuda:N or mps.
        peak_flops: the device's peak FLOP/s for MFU (default: a table for GPUs, measured on CPU).
        tensorboard: also log to TensorBoard (out_dir/tb).
    """

    max_steps: Optional[int] = None
    max_tokens: Optional[int] = None
    max_time: Optional[float] = None
    micro_batch_size: int = 8
    grad_accum: int = 1
    lr: Optional[float] = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: Optional[int] = None  # auto: warmup_for(total steps)
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    precision: str = "auto"
    compile: bool = False
    activation_checkpointing: bool = False
    eval_every: int = 100
    log_every: int = 10
    save_every: int = 500
    keep_last: int = 2
    seed: int = 42
    resume: str = "auto"
    distributed: str = "auto"
    device: str = "auto"
    peak_flops: Optional[float] = None
    tensorboard: bool = True

    def warmup_for(self, total_steps: Optional[int]) -> int:
        """The warmup of a run of `total_steps` optimizer steps: `warmup_steps` when given, else
        (auto) 5% of the run, at least 1 step and at most AUTO_WARMUP_MAX, the warmup-ratio rule
        of Hugging Face's `TrainingArguments.warmup_ratio` (ceil(ratio * total)) with the
        100-step cap of litgpt's default: a 20-step run warms up for 1 step instead of spending
        its whole budget below the peak rate (a fixed 100 did), a 10k-step run for 100. When the
        length is not known yet (a token or time budget before the first step), the cap."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        if not total_steps or total_steps < 1:
            return AUTO_WARMUP_MAX
        return min(AUTO_WARMUP_MAX, max(1, math.ceil(AUTO_WARMUP_RATIO * total_steps)))

    def validate(self, complete: bool = True) -> None:
        """Raise LLMKitError (one line) on the first bad setting. `complete=False` is the check
        a recipe (or the CLI) runs before it reads any data or loads a model: every value's
        range, but lr and the budget may still be unset (a recipe may pick them, e.g. finetune's
        lr by method and its budget from --epochs); the Trainer runs the complete check."""
        if complete and not (self.max_steps or self.max_tokens or self.max_time):
            raise LLMKitError("set a training budget: max_steps, max_tokens or max_time")
        # None = unset; a budget that is set must be positive (`--max_steps -5` or 0 would train
        # nothing and still publish the untrained model as OUT/final).
        for name in ("max_steps", "max_tokens", "max_time"):
            v = getattr(self, name)
            if v is not None and not (_is_number(v) and v > 0):
                raise LLMKitError(f"{name} must be > 0 (or unset), got {v}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise LLMKitError(f"precision must be auto, fp32, bf16 or fp16, got '{self.precision}'")
        if self.distributed not in ("auto", "none", "ddp", "fsdp"):
            raise LLMKitError(f"distributed must be auto, none, ddp or fsdp, got '{self.distributed}'")
        if (complete or self.lr is not None) and not (_is_number(self.lr) and self.lr > 0):
            raise LLMKitError(f"lr must be a positive number, got {self.lr}")
        for name in ("micro_batch_size", "grad_accum", "log_every"):
            if not (_is_number(getattr(self, name)) and getattr(self, name) >= 1):
                raise LLMKitError(f"{name} must be >= 1, got {getattr(self, name)}")
        # 0 has a meaning for these (no warmup, no decay, no clipping, checkpoints or
        # evaluations only at the end, keep every checkpoint); below 0 has none.
        for name in ("warmup_steps", "weight_decay", "grad_clip", "eval_every", "save_every", "keep_last"):
            v = getattr(self, name)
            if name == "warmup_steps" and v is None:  # auto: see warmup_for
                continue
            if not (_is_number(v) and v >= 0):
                raise LLMKitError(f"{name} must be >= 0, got {v}")
        if not (_is_number(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1):
            raise LLMKitError(f"min_lr_ratio must be between 0 and 1, got {self.min_lr_ratio}")
        for name in ("beta1", "beta2"):  # AdamW's (torch.optim.AdamW rejects others at step 0)
            v = getattr(self, name)
            if not (_is_number(v) and 0 <= v < 1):
                raise LLMKitError(f"{name} must be in [0, 1), got {v}")
        if self.peak_flops is not None and not (_is_number(self.peak_flops) and self.peak_flops > 0):
            raise LLMKitError(f"peak_flops must be > 0 (or unset), got {self.peak_flops}")


def _is_number(v) -> bool:
    """A real, finite number (not a bool, not NaN: `nan > 0` is False but so is `nan <= 0`)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


# --- devices, precision, processes --------------------------------------------------------------
@dataclass
class Runtime:
    rank: int = 0
    local_rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    mode: str = "none"  # none | ddp | fsdp

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_runtime(cfg: TrainConfig) -> Runtime:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if cfg.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise LLMKitError("device cuda requested but CUDA is not available")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif device.type == "cpu":
        tune_cpu_allocator()  # steps reuse freed memory instead of faulting it in again
    mode = "none"
    if world > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        mode = "ddp" if cfg.distributed in ("auto", "ddp") else cfg.distributed
        if mode == "none":
            raise LLMKitError("distributed=none under a multi-process launch")
    elif cfg.distributed == "fsdp":
        mode = "none"  # one process: sharding is a no-op
    return Runtime(rank, local_rank, world, device, mode)


def resolve_precision(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype, or None for fp32. fp16 on CPU is refused: it runs ~300x slower."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and _cpu_has_bf16():
            return torch.bfloat16
        return None
    if precision == "fp16" and device.type == "cpu":
        raise LLMKitError("fp16 on CPU falls back to a ~300x slower path; use --precision bf16 or fp32")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def device_peak_flops(device: torch.device, dtype: Optional[torch.dtype]) -> Optional[float]:
    """Dense matmul peak of the device in the training dtype (None = float32): the table of
    llmkit.hardware for GPUs (the one `llmkit plan` reads), a quick measurement on CPU."""
    if device.type == "cuda":
        entry = for_device_name(torch.cuda.get_device_name(device))
        if entry is None:
            return None
        # The peak of the precision the matmuls run in: fp32 training is not held against the
        # bf16 tensor-core rate, as on CPU, where the measurement runs in the same dtype.
        return entry.fp32 if dtype in (None, torch.float32) else entry.half
    if device.type != "cpu":
        return None
    return measure_cpu_peak(dtype)


# --- the loop -----------------------------------------------------------------------------------
LossFn = Callable[[torch.nn.Module, Any], dict]


class Trainer:
    """Runs `loss_fn(model, batch)` over `batches` with the settings of `cfg`.

    loss_fn returns a dict with "loss" (a scalar tensor, mean over the micro-batch's targets),
    "tokens" (how many tokens the micro-batch trained on, for throughput), and optionally more
    scalar metrics to log (e.g. DPO's reward margin).
    batches: this process's iterator of micro-batches (tensors, tuples or dicts of tensors);
    under torchrun each process iterates its own share of the global batch. If it has
    state_dict()/load_state_dict(), its position is checkpointed for exact resume.
    evaluate: model -> dict of metrics (e.g. {"val_loss": ..., "val_ppl": ...}), run every
    eval_every steps and at the end. on_eval: called after evaluate with (step, model, metrics),
    e.g. to print sample generations.
    save_fn: (directory, full state dict) -> None, writes the weights of a checkpoint (and
    whatever files make it loadable); default writes model.safetensors.
    trainable_only: checkpoints keep only parameters that require grad (LoRA adapters, heads).
    weight_fn: batch -> how many targets its mean loss averages over (e.g. the answer tokens of
    prompt-masked finetuning). Given, a step's loss is the mean over every target of the global
    batch, however it is split into micro-batches and processes: gradient accumulation and DDP
    then equal one big batch exactly (a mean of micro-batch means would weight a micro-batch
    with few targets like one with many). Without it, micro-batches weigh equally, which is
    the same thing when every micro-batch has as many targets (pretraining windows, DPO pairs).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: TrainConfig,
        out_dir: str | Path,
        batches: Iterator,
        loss_fn: LossFn,
        evaluate: Optional[Callable[[torch.nn.Module], dict]] = None,
        on_eval: Optional[Callable[[int, torch.nn.Module, dict], None]] = None,
        save_fn: Optional[Callable[[Path, dict], None]] = None,
        trainable_only: bool = False,
        flops_per_token: Optional[float] = None,
        runtime: Optional[Runtime] = None,
        weight_fn: Optional[Callable[[object], int]] = None,
    ):
        cfg.validate()
        self.cfg, self.batches, self.loss_fn = cfg, batches, loss_fn
        self.evaluate_fn, self.on_eval, self.save_fn = evaluate, on_eval, save_fn
        self.trainable_only, self.flops_per_token = trainable_only, flops_per_token
        self.weight_fn = weight_fn
        self.rt = runtime or setup_runtime(cfg)
        self.out = Path(out_dir)
        self.raw_model = model
        self.amp_dtype = resolve_precision(cfg.precision, self.rt.device)
        if self.amp_dtype is not None and trainable_only and self.rt.mode != "fsdp":
            # LoRA's frozen base in the autocast dtype: the same products without a cast of every
            # frozen weight in each forward and backward (FSDP2 wants one dtype per shard group).
            from llmkit.lora import hold_frozen_bases

            hold_frozen_bases(model, self.amp_dtype)
        self.step, self.tokens, self.elapsed = 0, 0, 0.0
        self.history: list[dict] = []
        self._signal: Optional[int] = None
        self.model = self._wrap(model)
        # One process: the forward and the loss compile together. Under DDP / FSDP the wrapped
        # model is what compiles (dynamo's DDP bucketing and FSDP2's hooks expect that layout).
        self._forward = (torch.compile(self._forward_loss) if cfg.compile and self.rt.mode == "none"
                         else self._forward_loss)
        self.optimizer = make_optimizer(self.model if self.rt.mode == "fsdp" else model, cfg.lr,
                                        cfg.weight_decay, (cfg.beta1, cfg.beta2))
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None

    # -- setup --
    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        model.to(self.rt.device)
        if self.cfg.activation_checkpointing:
            if not hasattr(model, "gradient_checkpointing"):
                raise LLMKitError("this model does not support activation checkpointing")
            for stack in (model, getattr(model, "encoder", None)):  # an encoder-decoder's encoder too
                if stack is not None:
                    stack.gradient_checkpointing = True
        model.train()
        if self.rt.mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.rt.device.index] if self.rt.device.type == "cuda" else None
            wrapped = DDP(model, device_ids=ids, find_unused_parameters=False)
        elif self.rt.mode == "fsdp":
            from torch.distributed.fsdp import fully_shard

            # Shard each block, then the root (embeddings, final norm, head): the standard
            # FSDP2 layout, one all-gather per block in forward and backward.
            for block in getattr(model, "blocks", []):
                fully_shard(block)
            wrapped = fully_shard(model)
        else:
            wrapped = model
        if self.cfg.compile:
            wrapped = torch.compile(wrapped)
        return wrapped

    def _forward_loss(self, batch) -> dict:
        """A micro-batch's forward and loss, under the run's autocast. With --compile in one
        process this whole call is one graph: the model and the loss after it (the fp32 cast of
        the logits, the cross-entropy over the vocabulary), which inductor fuses; a compiled model
        alone left them eager, about a third of a step. The model's own compiled wrapper is
        traced inline here and serves evaluation."""
        with self._autocast():
            return self.loss_fn(self.model, batch)

    def _state_options(self, **kw):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, cpu_offload=self.rt.mode != "none", **kw)

    # -- checkpointing (the files are checkpoint.py's) --
    def save_checkpoint(self) -> Optional[Path]:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        from llmkit.checkpoint import save_training_checkpoint

        target = self.model if self.rt.mode == "fsdp" else self.raw_model
        sd = get_model_state_dict(target, options=self._state_options())
        osd = get_optimizer_state_dict(target, self.optimizer, options=self._state_options())
        if not self.rt.main:
            self._barrier()
            return None
        if self.trainable_only:
            keep = {n for n, p in self.raw_model.named_parameters() if p.requires_grad}
            sd = {k: v for k, v in sd.items() if k in keep}
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        data_state = self.batches.state_dict() if hasattr(self.batches, "state_dict") else None
        state = {"step": self.step, "tokens": self.tokens, "elapsed": self.elapsed, "data": data_state,
                 "config": asdict(self.cfg), "world": self.rt.world}
        path = save_training_checkpoint(self.out, self.step, sd, self.save_fn, osd, rng, state, self.cfg.keep_last)
        self._barrier()
        return path

    def load_checkpoint(self, path: Path, ckpt=None) -> None:
        """Restore weights, optimizer, RNG, counters and data position from a step checkpoint
        (`ckpt`: its loaded contents, when the caller has read them already)."""
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        from llmkit.checkpoint import load_training_checkpoint

        ckpt = ckpt if ckpt is not None else load_training_checkpoint(path)
        sd = ckpt.model
        target = self.model if self.rt.mode == "fsdp" else self.raw_model
        missing = [n for n, p in self.raw_model.named_parameters() if p.requires_grad and n not in sd
                   and not (n == "lm_head.weight" and "embed.weight" in sd)]
        if missing:
            raise LLMKitError(f"{path}: checkpoint lacks trained parameters {missing[:3]}")
        set_model_state_dict(target, sd, options=self._state_options(strict=False))
        set_optimizer_state_dict(target, self.optimizer, ckpt.optimizer, options=self._state_options())
        torch.set_rng_state(ckpt.rng["cpu"])
        if "cuda" in ckpt.rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(ckpt.rng["cuda"])
        state = ckpt.state
        self.step, self.tokens, self.elapsed = state["step"], state["tokens"], state["elapsed"]
        if state.get("data") is not None and hasattr(self.batches, "load_state_dict"):
            self.batches.load_state_dict(state["data"])
        if self.rt.main:
            print(f"resumed from {path} at step {self.step}", flush=True)

    def _maybe_resume(self) -> None:
        """Continue from the newest intact checkpoint (`--resume auto`; damaged ones are skipped
        with a warning), after clearing what an interrupted write left behind."""
        from llmkit.checkpoint import clean_stale_files, load_resume_checkpoint

        if self.rt.main:
            clean_stale_files(self.out)
        self._barrier()

        def warn(msg: str) -> None:
            if self.rt.main:
                print(msg, file=sys.stderr, flush=True)

        found = load_resume_checkpoint(self.out, self.cfg.resume, warn)
        if found is not None:
            self.load_checkpoint(*found)

    # -- distributed helpers --
    def _barrier(self) -> None:
        if self.rt.world > 1:
            dist.barrier()

    @property
    def _stat_dtype(self) -> torch.dtype:
        # float64 counts tokens exactly (to 2**53); MPS has no float64.
        return torch.float32 if self.rt.device.type == "mps" else torch.float64

    def _loss_scales(self, micro_batches: list) -> list:
        """What each micro-batch's mean loss is multiplied by before backward. Gradients are
        summed over micro-batches and averaged over processes, so scale_i = w_i * world / W
        (W: the targets of all micro-batches of all processes) makes the step's gradient that of
        the global target mean; without weights, 1 / grad_accum. The weights stay on the device
        (one all-reduce of their sum under torchrun, no sync alone)."""
        n = len(micro_batches)
        if self.weight_fn is None:
            return [1.0 / n] * n
        w = torch.stack([torch.as_tensor(self.weight_fn(b), device=self.rt.device).to(self._stat_dtype)
                         for b in micro_batches])
        total = w.sum()
        if self.rt.world > 1:
            dist.all_reduce(total)
        scales = torch.where(total > 0, w * self.rt.world / total, torch.zeros_like(w))
        return list(scales.float())

    def _step_stats(self, loss_sum, tokens, grad_norm, extra: list, seconds: float) -> list[float]:
        """[loss, tokens, grad norm, seconds, signalled, *extra] of the step just taken, in one
        device-to-host transfer; under torchrun one all-reduce: loss, metrics, seconds and grad
        norm averaged over processes, tokens summed, `signalled` true if any process got one."""
        local = torch.tensor([seconds, float(self._signal is not None)], dtype=self._stat_dtype)
        parts = [loss_sum, tokens, grad_norm, *local.to(self.rt.device), *extra]
        stats = torch.stack([torch.as_tensor(x, device=self.rt.device).to(self._stat_dtype) for x in parts])
        if self.rt.world == 1:
            return stats.tolist()
        dist.all_reduce(stats)
        vals = stats.tolist()
        w = self.rt.world
        return [vals[0] / w, vals[1], vals[2] / w, vals[3] / w, vals[4] > 0, *(v / w for v in vals[5:])]

    def _mean(self, value: float) -> float:
        if self.rt.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.rt.device)
        dist.all_reduce(t)
        return t.item() / self.rt.world

    def _any(self, flag: bool) -> bool:
        if self.rt.world == 1:
            return flag
        t = torch.tensor([int(flag)], device=self.rt.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def _local(self, batch):
        """Move a micro-batch (tensor, tuple or dict of tensors) to the device."""
        def move(t):
            return t.to(self.rt.device, non_blocking=True) if torch.is_tensor(t) else t

        if isinstance(batch, dict):
            return {k: move(v) for k, v in batch.items()}
        if isinstance(batch, (tuple, list)):
            return type(batch)(move(t) for t in batch)
        return move(batch)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.rt.device.type, dtype=self.amp_dtype)

    # -- evaluation --
    def run_eval(self) -> dict:
        if self.evaluate_fn is None:
            return {}
        self.model.eval()
        with torch.no_grad(), self._autocast():
            metrics = self.evaluate_fn(self.model)
        self.model.train()
        metrics = {k: self._mean(float(v)) for k, v in metrics.items()}
        if self.on_eval is not None and self.rt.main:
            self.on_eval(self.step, self.raw_model, metrics)
        return metrics

    # -- main --
    def _total_steps(self) -> Optional[int]:
        c = self.cfg
        if c.max_steps:
            return c.max_steps
        return None  # token budgets: derived once the first step tells us tokens per step

    def fit(self) -> dict:
        from llmkit.training.logger import MetricsLogger

        c = self.cfg
        torch.manual_seed(c.seed + self.rt.rank)
        self._maybe_resume()
        # The progress bar counts the budget the run has: steps, tokens or seconds.
        budget, unit = ((c.max_steps, "step") if c.max_steps else (c.max_tokens, "tok") if c.max_tokens
                        else (c.max_time, "s"))
        self._progress_unit = unit
        logger = MetricsLogger(self.out, enabled=self.rt.main, tensorboard=c.tensorboard, total=budget, unit=unit,
                               resume_step=self.step)
        peak = c.peak_flops or (device_peak_flops(self.rt.device, self.amp_dtype) if self.flops_per_token else None)
        old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        total = self._total_steps()
        # Tokens per optimizer step fix the step count of a token budget (and so the LR schedule);
        # after a resume they come from the counters so the schedule continues unchanged.
        tokens_per_step: Optional[int] = self.tokens // self.step if self.step else None
        stop_reason = "budget"
        try:
            if self.step == 0 and c.eval_every and self.evaluate_fn is not None:
                logger.log(self.step, self.run_eval(), tokens=self.tokens)
            t_last, tok_last = time.perf_counter(), self.tokens
            done = self._done(total)  # a resumed run may have met its budget already
            while not done:
                t0 = time.perf_counter()
                n_total = total or self._estimate_total(tokens_per_step)
                lr = lr_at(self.step, c.lr, c.warmup_for(n_total), n_total, c.min_lr_ratio)
                for g in self.optimizer.param_groups:
                    g["lr"] = lr
                # What a step reports (loss, tokens, grad norm, the loss_fn's metrics) stays on
                # the device until the step is done and comes back in one transfer (under
                # torchrun, one all-reduce): one device sync per step, not one per micro-batch
                # or per number (what matters on a GPU with gradient accumulation).
                dev = self.rt.device
                loss_sum = torch.zeros((), device=dev)
                step_tokens = torch.zeros((), dtype=self._stat_dtype, device=dev)
                extra: dict[str, torch.Tensor] = {}
                micro_batches = [self._local(next(self.batches)) for _ in range(c.grad_accum)]
                scales = self._loss_scales(micro_batches)
                for micro, batch in enumerate(micro_batches):
                    sync = micro == c.grad_accum - 1
                    ctx = self.model.no_sync() if (self.rt.mode == "ddp" and not sync) else contextlib.nullcontext()
                    if self.rt.mode == "fsdp":
                        self.model.set_requires_gradient_sync(sync)
                    with ctx:
                        out = self._forward(batch)
                        # A micro-batch without targets has a NaN mean: it still runs backward
                        # (DDP's hooks expect every process to), with zero weight.
                        scale = scales[micro]
                        raw = out["loss"]
                        loss = (torch.where(scale > 0, raw, raw.nan_to_num(0.0)) if torch.is_tensor(scale)
                                else raw if scale else raw.nan_to_num(0.0)) * scale
                        (self.scaler.scale(loss) if self.scaler else loss).backward()
                    loss_sum = loss_sum + loss.detach().float()
                    step_tokens = step_tokens + out.get("tokens", 0)
                    for k, v in out.items():
                        if k not in ("loss", "tokens"):
                            v = v.detach().float() if torch.is_tensor(v) else torch.tensor(float(v), device=dev)
                            extra[k] = extra.get(k, 0.0) + v / c.grad_accum
                if self.scaler:
                    self.scaler.unscale_(self.optimizer)
                grad_norm = self._clip()
                if self.scaler:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                stats = self._step_stats(loss_sum, step_tokens, grad_norm, list(extra.values()),
                                         time.perf_counter() - t0)
                loss_val, step_tokens, grad_norm, dt, signalled = stats[:5]
                step_tokens = int(step_tokens)
                tokens_per_step = tokens_per_step or step_tokens
                self.tokens += step_tokens
                self.elapsed += dt
                if not math.isfinite(loss_val):
                    raise LLMKitError(f"loss is {loss_val} at step {self.step}: lower the learning rate or check the data")
                row = {"loss": loss_val, "lr": lr, "grad_norm": grad_norm, **dict(zip(extra, stats[5:]))}
                self.history.append({"step": self.step, "loss": loss_val})
                if self.step % c.log_every == 0 or self.step == 1:
                    now = time.perf_counter()
                    tps = (self.tokens - tok_last) / max(now - t_last, 1e-9)
                    t_last, tok_last = now, self.tokens
                    row["tokens_per_sec"] = tps
                    if peak and self.flops_per_token:
                        row["mfu"] = self.flops_per_token * tps / (peak * self.rt.world)
                logger.log(self.step, row, tokens=self.tokens, done=self._spent())
                # Every process has the same step, tokens and (mean) elapsed time: they agree on
                # `done` without another collective.
                done = self._budget_met()
                if c.eval_every and self.step % c.eval_every == 0 and not done:
                    logger.log(self.step, self.run_eval(), tokens=self.tokens)
                if c.save_every and self.step % c.save_every == 0 and not done:
                    self.save_checkpoint()
                if signalled:
                    stop_reason = "signal"
                    break
            final_metrics = self.run_eval() if stop_reason == "budget" else {}
            if final_metrics:
                logger.log(self.step, final_metrics, tokens=self.tokens)
            ckpt = self.save_checkpoint()
        finally:
            for s, h in old_handlers.items():
                signal.signal(s, h)
            logger.close()
        if self.rt.main:
            logger.plot()
        if stop_reason == "signal":
            if self.rt.main:
                print(f"stopped by signal at step {self.step}; checkpoint saved to {ckpt}; resume with --resume auto", flush=True)
            raise SystemExit(128 + (self._signal or signal.SIGTERM))
        return {"step": self.step, "tokens": self.tokens, "checkpoint": ckpt, **final_metrics,
                "loss": self.history[-1]["loss"] if self.history else None}

    def _estimate_total(self, tokens_per_step: Optional[int]) -> int:
        c = self.cfg
        if c.max_tokens and tokens_per_step:
            return max(1, math.ceil(c.max_tokens / tokens_per_step))
        if c.max_tokens:  # before the first step: from the nominal batch shape
            return max(1, c.warmup_for(None) + 1)
        # Time budget only: decay over the steps the elapsed rate predicts.
        rate = self.step / self.elapsed if self.elapsed > 0 else 0
        warmup = c.warmup_for(None)
        return max(warmup + 1, int(rate * (c.max_time or 0)) or warmup + 1)

    def _spent(self) -> float:
        """How much of the budget is spent, in the progress bar's unit (steps, tokens or seconds)."""
        unit = getattr(self, "_progress_unit", "step")
        return self.step if unit == "step" else self.tokens if unit == "tok" else self.elapsed

    def _budget_met(self) -> bool:
        c = self.cfg
        return bool((c.max_steps and self.step >= c.max_steps) or (c.max_tokens and self.tokens >= c.max_tokens)
                    or (c.max_time and self.elapsed >= c.max_time))

    def _done(self, total: Optional[int]) -> bool:
        """Whether the budget is met, agreed by every process (elapsed times may differ)."""
        return self._any(self._budget_met())

    def _clip(self) -> torch.Tensor:
        """Clip the gradients to grad_clip (0: only measure); the global norm, as a tensor."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        if not params:
            return torch.zeros((), device=self.rt.device)
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):  # DTensor under FSDP2
            norm = norm.full_tensor()
        return norm

    def _on_signal(self, signum, frame) -> None:
        if self._signal is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._signal = signum
        if self.rt.main:
            print(f"\nreceived signal {signum}: saving a checkpoint after this step ...", flush=True)
