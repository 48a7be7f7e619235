"""Stage 2: train the R² Block, pyramid and heads on a feature cache; evaluate every epoch; keep a run folder.

A run folder holds: config.json (the resolved config), log.csv (one row per epoch: losses, LR, metrics),
last.pt (everything needed to resume), best.pt (the best epoch by the dataset's headline metric),
the best epoch's predictions (<split>_preds.jsonl; QVHighlights: hl_<split>_submission.jsonl) and metrics.json.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from r2 import datasets, metrics
from r2.cache import Cache, CacheError
from r2.checkpoint import build_model, check_compatible, checkpoint_meta, load_checkpoint, save
from r2.data import GlobalBatchSampler, GroundingDataset, Preloaded, collate, to_device
from r2.decode import DecodeConfig, decode, decode_config_for
from r2.losses import Criterion, LossConfig, loss_config_for
from r2.model import R2Config, R2Model, config_for


@dataclass
class Schedule:
    """SPEC §7 per-dataset defaults."""
    batch_size: int
    epochs: int
    lr: float
    lr_drop: int | None  # epoch at which the LR is multiplied by 0.1 (None: never)
    warmup_iters: int
    passes: int = 1  # passes over the training data per epoch (QVHighlights: 4)


SCHEDULES = {
    "qvhighlights": Schedule(128, 30, 5e-4, 20, 500, passes=4),
    "charades": Schedule(32, 50, 2.5e-4, 30, 500),
    "tacos": Schedule(32, 100, 2.5e-4, 50, 500),
    "ego4d": Schedule(32, 30, 2.5e-4, 20, 500),
    "youtube": Schedule(4, 200, 5e-4, None, 50),
    "tvsum": Schedule(4, 500, 5e-4, None, 50),
    # not in the paper: the demo reaches R1@0.5 > 80 on its val split in 10 epochs (about 5 minutes on 2 CPU
    # cores with the tiny CLIP); custom sets (often small) get the same recipe with more epochs
    "demo": Schedule(16, 12, 1e-3, 10, 100),
    "custom": Schedule(16, 30, 1e-3, 20, 100),
}


@dataclass
class TrainConfig:
    cache: str  # the cache entry file (cache/<name>.h5)
    out: str | None = None  # run folder (default runs/<cache name>-<time>)
    domain: str | None = None  # YouTube Highlights / TVSum: the domain to train and evaluate
    # schedule (None: the dataset's default from SPEC §7)
    batch_size: int | None = None
    epochs: int | None = None
    lr: float | None = None
    lr_drop: int | None = None  # epoch of the ×0.1 LR step; -1 disables it
    warmup_iters: int | None = None
    passes: int | None = None  # passes over the training data per epoch
    warmup_ratio: float = 1e-3  # linear warmup starts from this fraction of the LR
    weight_decay: float = 1e-4
    grad_clip: float = 35.0  # max grad norm
    # model (None: the dataset's default)
    dropout: float | None = None
    droppath: float | None = None
    hidden: int | None = None
    # loss weights (None: the dataset's default)
    cls_weight: float | None = None
    reg_weight: float | None = None
    sal_weight: float | None = None
    video_nce_weight: float | None = None
    layer_nce_weight: float | None = None
    # decoding (None: the dataset's default)
    nms: str | None = None  # hard | soft | none
    nms_iou: float | None = None
    unit: float | None = None  # seconds; 0 disables rounding
    # run
    train_split: str | None = None
    eval_split: str | None = None
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on capable GPUs, else fp16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    workers: int | None = None  # DataLoader worker processes (each opens the cache itself); None: 0 on a CPU (the
    # reads are cheap next to the model, and workers would compete with torch's threads), 4 on a GPU
    preload: bool = False  # read the whole split's features into memory first (on the GPU when training there)
    progress: bool = True
    resume: str | None = None  # a run folder: continue from its last.pt


def resolve(cfg: TrainConfig, cache: Cache) -> tuple[TrainConfig, R2Config, LossConfig, DecodeConfig]:
    """Fill every None field from the dataset's defaults; the result is what config.json records."""
    name = cache.dataset
    info = datasets.dataset_info(name)
    sched = SCHEDULES[name]
    cfg = dataclasses.replace(cfg)
    for f in ("batch_size", "epochs", "lr", "lr_drop", "warmup_iters", "passes"):
        if getattr(cfg, f) is None:
            setattr(cfg, f, getattr(sched, f))
    if cfg.lr_drop is not None and cfg.lr_drop < 0:
        cfg.lr_drop = None
    cfg.train_split = cfg.train_split or info.train_split
    cfg.eval_split = cfg.eval_split or info.eval_split
    if name in ("youtube", "tvsum") and cfg.domain is None:
        raise ValueError(f"{name} is trained per domain: pass --domain (one of {', '.join(domains(cache))})")
    dims = cache.dims
    model_cfg = config_for(name, video_dim=dims["video_dim"], query_dim=dims["query_dim"], tokens=dims["tokens"],
                           layers=len(dims["layers"]))
    model_cfg = _override(model_cfg, dropout=cfg.dropout, droppath=cfg.droppath, hidden=cfg.hidden)
    loss_cfg = _override(loss_config_for(name), cls_weight=cfg.cls_weight, reg_weight=cfg.reg_weight,
                         sal_weight=cfg.sal_weight, video_nce_weight=cfg.video_nce_weight,
                         layer_nce_weight=cfg.layer_nce_weight)
    dec_cfg = decode_config(name, cfg)
    return cfg, model_cfg, loss_cfg, dec_cfg


def decode_config(dataset: str, cfg: TrainConfig) -> DecodeConfig:
    """The dataset's SPEC §6 decoding with the run's --nms / --nms-iou / --unit overrides (none, 0: off)."""
    dec_cfg = decode_config_for(dataset)
    if cfg.nms is not None:
        dec_cfg = dataclasses.replace(dec_cfg, nms=None if cfg.nms == "none" else cfg.nms)
    if cfg.unit is not None:
        dec_cfg = dataclasses.replace(dec_cfg, unit=cfg.unit or None)
    return _override(dec_cfg, nms_iou=cfg.nms_iou)


def _override(obj, **values):
    return dataclasses.replace(obj, **{k: v for k, v in values.items() if v is not None})


def domains(cache: Cache) -> list[str]:
    return sorted({r.get("domain") for split in cache.splits for r in cache.records(split) if r.get("domain")})


def start_distributed(device: str) -> tuple[int, int]:
    """(rank, world size). Under torchrun (WORLD_SIZE > 1) join the process group: NCCL on GPUs, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not torch.distributed.is_initialized():
        gpu = pick_device(device).type == "cuda"
        torch.distributed.init_process_group("nccl" if gpu else "gloo")
    return torch.distributed.get_rank(), world


def pick_device(name: str) -> torch.device:
    """auto: this process's GPU (LOCAL_RANK under torchrun) when there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(name)


def pick_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if name == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_factor(it: int, epoch: int, cfg: TrainConfig) -> float:
    """Linear warmup from warmup_ratio to 1 over warmup_iters iterations, then ×0.1 from epoch lr_drop on."""
    factor = 1.0
    if it < cfg.warmup_iters:
        alpha = it / cfg.warmup_iters
        factor = cfg.warmup_ratio * (1 - alpha) + alpha
    if cfg.lr_drop is not None and epoch >= cfg.lr_drop:
        factor *= 0.1
    return factor


# ----------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def predict(model: R2Model, loader: DataLoader, dataset: GroundingDataset, dec_cfg: DecodeConfig,
            device: torch.device, autocast_dtype: torch.dtype | None) -> list[dict]:
    """Predictions of a whole split in the QVHighlights submission format (plus `query`)."""
    model.eval()
    preds = []
    for batch in loader:
        batch = to_device(batch, device)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            outputs = model(batch["video"], batch["video_mask"], batch["query"], batch["query_mask"])
        for i, pred in zip(batch["index"].tolist(), decode(outputs, batch, dec_cfg)):
            r = dataset.records[i]
            preds.append({"qid": r.qid, "query": r.query, "vid": r.vid, **pred})
    return preds


def evaluate_split(model, dataset, dec_cfg, device, autocast_dtype, batch_size, workers) -> tuple[list, dict]:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=workers)
    preds = predict(model, loader, dataset, dec_cfg, device, autocast_dtype)
    gt = [r.to_json() for r in dataset.records]
    return preds, metrics.evaluate(dataset.cache.dataset, preds, gt)


def predictions_name(dataset: str, split: str) -> str:
    return f"hl_{split}_submission.jsonl" if dataset == "qvhighlights" else f"{split}_preds.jsonl"


def saved_config(ckpt: dict) -> TrainConfig:
    """The TrainConfig a checkpoint records; fields this r2 no longer has are dropped with a warning, so an older
    checkpoint still loads (fields it lacks take today's defaults)."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    values = dict(ckpt["config"])
    dropped = sorted(set(values) - known)
    if dropped:
        warnings.warn(f"checkpoint config fields {dropped} are not TrainConfig fields of this r2; ignored")
    return TrainConfig(**{k: v for k, v in values.items() if k in known})


def evaluate_checkpoint(checkpoint: str | Path, cache_path: str | Path, split: str | None = None,
                        out: str | Path | None = None, batch_size: int = 32, device: str = "auto",
                        domain: str | None = None, dataset: str | None = None,
                        allow_feature_source: bool = False) -> tuple[dict, Path]:
    """Predictions and metrics of a checkpoint (r2's, an official .pth or a zoo name) on one split of a cache
    (default: the dataset's evaluation split). Written to `out`, by default a new folder
    runs/eval-<checkpoint>-<cache>-<split>-<time>, so nothing the run folder holds is replaced.
    Returns (metrics, output folder)."""
    ckpt = load_checkpoint(checkpoint, dataset)
    cache = Cache(cache_path)
    check_compatible(ckpt, cache, str(checkpoint), allow_feature_source)
    cfg = saved_config(ckpt)
    cfg, _, _, dec_cfg = resolve(dataclasses.replace(cfg, cache=str(cache_path), domain=domain or cfg.domain,
                                                     eval_split=split or cfg.eval_split), cache)
    split = cfg.eval_split
    dev = pick_device(device)
    model = build_model(ckpt).to(dev)
    data = GroundingDataset(cache, split, train=False)
    if cfg.domain:
        data.records = [r for r in data.records if r.domain == cfg.domain]
    if not data.records:
        raise CacheError(f"{cache.entry}: split {split!r} has no sample with features"
                         f"{f' in domain {cfg.domain}' if cfg.domain else ''} ({data.missing} without); nothing to "
                         f"evaluate")
    preds, scores = evaluate_split(model, data, dec_cfg, dev, pick_precision("auto", dev), batch_size, 0)
    if out is None:
        name = Path(checkpoint).parent.name if Path(checkpoint).name in ("best.pt", "last.pt") else Path(
            str(checkpoint).replace(":", "-")).stem
        out = Path("runs") / f"eval-{name}-{Path(cache_path).stem}-{split}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics.write_submission(out / predictions_name(cache.dataset, split), preds)
    (out / f"{split}_metrics.json").write_text(json.dumps(
        {"split": split, "checkpoint": str(checkpoint), "cache": str(cache_path), "scored": len(preds),
         "expected": len(data.records) + data.missing, "missing": data.missing, **scores}, indent=2))
    return scores, out


# ----------------------------------------------------------------------------------------------- training


class Trainer:
    """Owns one run. `cache` and `features` let several runs share one opened (and preloaded) cache: a sweep
    opens the cache and reads its features once, then hands both to every trial."""

    def __init__(self, cfg: TrainConfig, cache: Cache | None = None, features: Preloaded | None = None):
        self.cache = cache if cache is not None else Cache(cfg.cache)
        self.features = features
        resume = None
        if cfg.resume:
            resume = load_checkpoint(Path(cfg.resume) / "last.pt")
            check_compatible(resume, self.cache, f"{cfg.resume}/last.pt")
            saved = saved_config(resume)
            # the run's own settings, except where it runs and for how long (--epochs extends a finished run)
            cfg = dataclasses.replace(saved, resume=cfg.resume, cache=cfg.cache, progress=cfg.progress,
                                      workers=cfg.workers, preload=cfg.preload, device=cfg.device,
                                      epochs=cfg.epochs or saved.epochs)
        self.cfg, self.model_cfg, self.loss_cfg, self.dec_cfg = resolve(cfg, self.cache)
        cfg = self.cfg
        self.rank, self.world = start_distributed(cfg.device)
        self.device = pick_device(cfg.device)
        if cfg.workers is None:
            cfg.workers = 4 if self.device.type == "cuda" else 0
        self.autocast_dtype = pick_precision(cfg.precision, self.device)
        seed_everything(cfg.seed)

        self.train_set = self._dataset(cfg.train_split, train=True)
        self.eval_set = self._dataset(cfg.eval_split, train=False)
        if len(self.train_set) == 0:
            raise CacheError(f"{cfg.cache}: no training sample in split {cfg.train_split!r} has features "
                             f"({self.train_set.missing} records without cached video/query); run extraction")
        self.model = R2Model(self.model_cfg).to(self.device)
        self.ddp = None
        if self.world > 1:  # gradients averaged across ranks; TVSum/YouTube keep an unused boundary coefficient
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=not self.model_cfg.boundary)
        self.criterion = Criterion(self.loss_cfg)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.batch_size % self.world:
            raise ValueError(f"--batch-size {cfg.batch_size} (the global batch) must be a multiple of the "
                             f"{self.world} processes")
        self.iters_per_epoch = cfg.passes * len(self._sampler(0))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda it: lr_factor(it, it // self.iters_per_epoch, cfg))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.autocast_dtype == torch.float16)
        self.epoch = 0
        self.best = {"metric": metrics.headline(self.cache.dataset), "value": -math.inf, "epoch": -1}
        if resume is not None:
            self.out = Path(cfg.resume)
            self._restore(resume)
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            out = [Path(cfg.out) if cfg.out else Path("runs") / f"{Path(cfg.cache).stem}-{stamp}"]
            if self.world > 1:
                torch.distributed.broadcast_object_list(out, src=0)  # every rank uses rank 0's folder
            self.out = out[0]
            if self.rank == 0:
                self.out.mkdir(parents=True, exist_ok=True)
                (self.out / "config.json").write_text(json.dumps(self.describe(), indent=2))

    def _sampler(self, epoch: int, part: int = 0) -> GlobalBatchSampler:
        seed = self.cfg.seed * 1000 + epoch * 10 + part
        return GlobalBatchSampler(len(self.train_set), self.cfg.batch_size, seed, self.rank, self.world)

    def _dataset(self, split: str, train: bool) -> GroundingDataset:
        ds = GroundingDataset(self.cache, split, train=train, source=self.features)
        if self.cfg.domain is not None:
            ds.records = [r for r in ds.records if r.domain == self.cfg.domain]
        if self.cfg.preload and self.features is None:
            vids, texts = ds.vids_and_texts()
            ds.source = Preloaded(self.cache, vids, texts, device="cpu")
            print(f"preloaded {split}: {len(vids)} videos, {len(texts)} queries, "
                  f"{ds.source.nbytes / 1e9:.2f} GB in {ds.source.seconds:.1f} s")
        return ds

    def describe(self) -> dict:
        return {"dataset": self.cache.dataset, "cache": str(self.cfg.cache), **dataclasses.asdict(self.cfg),
                "model_config": dataclasses.asdict(self.model_cfg), "loss_config": dataclasses.asdict(self.loss_cfg),
                "decode_config": dataclasses.asdict(self.dec_cfg), "fingerprint": self.cache.fingerprint,
                "dims": self.cache.dims, "headline": self.best["metric"], "device": str(self.device),
                "autocast": str(self.autocast_dtype), "train_samples": len(self.train_set),
                "eval_samples": len(self.eval_set)}

    def _restore(self, ckpt: dict):
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch = ckpt["epoch"]
        self.best = ckpt["best"]
        if self.rank == 0:
            _truncate_csv(self.out / "log.csv", self.epoch)  # rows of an epoch that ran after last.pt are redone
        torch.set_rng_state(ckpt["rng"]["torch"])
        if torch.cuda.is_available() and ckpt["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])

    def _save(self, path: Path, full: bool):
        train_frames = max(self.cache.num_frames(r.vid) for r in self.train_set.records)
        state = {**checkpoint_meta(self.cache, dataclasses.asdict(self.cfg), self.model_cfg, train_frames), "model": self.model.state_dict(),
                 "epoch": self.epoch, "best": self.best}
        if full:
            state.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                         scaler=self.scaler.state_dict(),
                         rng={"torch": torch.get_rng_state(),
                              "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []})
        save(state, path)

    def train_epoch(self) -> dict[str, float]:
        cfg = self.cfg
        self.model.train()
        model = self.ddp or self.model
        sums: dict[str, float] = {}
        steps = 0
        bar = tqdm(total=self.iters_per_epoch, desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                   disable=not cfg.progress or self.rank != 0, leave=False)
        for part in range(cfg.passes):
            self.train_set.seed = cfg.seed * 1000 + self.epoch * 10 + part
            loader = DataLoader(self.train_set, batch_sampler=self._sampler(self.epoch, part), collate_fn=collate,
                                num_workers=cfg.workers, pin_memory=self.device.type == "cuda")
            for batch in loader:
                batch = to_device(batch, self.device)
                with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                                    enabled=self.autocast_dtype is not None):
                    outputs = model(batch["video"], batch["video_mask"], batch["query"], batch["query_mask"])
                losses = self.criterion(outputs, batch)
                loss = losses["loss"]
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"epoch {self.epoch + 1} step {steps}: non-finite loss "
                                             f"{ {k: float(v.detach()) for k, v in losses.items()} }")
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.scheduler.step()
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                steps += 1
                bar.update()
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        bar.close()
        means = torch.tensor([sums[k] / max(steps, 1) for k in sorted(sums)], dtype=torch.float64)
        if self.world > 1:  # the logged losses are the mean over ranks
            torch.distributed.all_reduce(means)
            means /= self.world
        return dict(zip(sorted(sums), means.tolist()))

    def _evaluate_and_save(self, train_losses: dict[str, float], start: float):
        cfg = self.cfg
        preds, scores = evaluate_split(self.model, self.eval_set, self.dec_cfg, self.device, self.autocast_dtype,
                                       cfg.batch_size // self.world, cfg.workers)
        row = {"epoch": self.epoch, "lr": self.optimizer.param_groups[0]["lr"],
               **{f"train_{k}": round(v, 6) for k, v in train_losses.items()},
               **{f"{cfg.eval_split}_{k}": v for k, v in scores.items()}, "seconds": round(time.time() - start, 2)}
        headline = scores[self.best["metric"]]
        improved = headline > self.best["value"]
        if improved:
            self.best = {"metric": self.best["metric"], "value": headline, "epoch": self.epoch}
            self._save(self.out / "best.pt", full=False)
            metrics.write_submission(self.out / predictions_name(self.cache.dataset, cfg.eval_split), preds)
            (self.out / "metrics.json").write_text(json.dumps(
                {"epoch": self.epoch, "split": cfg.eval_split, "headline": self.best["metric"], **scores}, indent=2))
        _append_csv(self.out / "log.csv", row)
        self._save(self.out / "last.pt", full=True)
        tqdm.write(f"epoch {self.epoch}/{cfg.epochs} loss {train_losses['loss']:.4f} | "
                   f"{self.best['metric']} {headline:.2f}{' (best)' if improved else ''} | {row['seconds']:.1f} s")

    def fit(self) -> dict:
        cfg = self.cfg
        if self.rank == 0:
            print(f"run folder {self.out} | {len(self.train_set)} train / {len(self.eval_set)} {cfg.eval_split} samples"
                  f" | {sum(p.numel() for p in self.model.parameters() if p.requires_grad):,} parameters | "
                  f"{self.device} {self.autocast_dtype or 'fp32'} | {self.world} process(es) | "
                  f"best by {self.best['metric']}")
        while self.epoch < cfg.epochs:
            start = time.time()
            train_losses = self.train_epoch()
            self.epoch += 1
            if self.rank == 0:  # evaluation, checkpoints and logs are rank 0's; the others wait at the barrier
                self._evaluate_and_save(train_losses, start)
            if self.world > 1:
                torch.distributed.barrier()
        if self.world > 1:
            torch.distributed.destroy_process_group()
        return self.best


def _append_csv(path: Path, row: dict):
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _truncate_csv(path: Path, epochs: int):
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    kept = [r for r in rows if int(r["epoch"]) <= epochs]
    if len(kept) != len(rows):
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(kept)
