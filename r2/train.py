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
import time
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from r2 import engine, metrics
from r2.engine import evaluate_split
from r2.cache import Cache, CacheError
from r2.checkpoint import (build_model, cache_identity, check_compatible, check_same_cache, checkpoint_file,
                           checkpoint_meta, load_checkpoint, save)
from r2.data import (MIN_TRAIN_SECONDS, GlobalBatchSampler, GroundingDataset, Preloaded, collate,
                     resident_features)
from r2.decode import DecodeConfig
from r2.errors import OFF, ConfigError, check_new_folder, flag
from r2.losses import Criterion, LossConfig, loss_config_for
from r2.model import R2Config, R2Model, config_for
from r2.recipes import recipe
from r2.train_config import LOSS_WEIGHTS, TrainConfig, decode_config, override, saved_config, shown
from r2.runtime import pick_device, pick_precision, precision_name, seed_everything, start_distributed






def resolve(cfg: TrainConfig, cache: Cache) -> tuple[TrainConfig, R2Config, LossConfig, DecodeConfig]:
    """Fill every None field from the dataset's defaults (an LR drop of None: OFF, never) and check the splits and
    domain against the cache; the model, loss and decoding values are written back, so the config records them."""
    name = cache.dataset
    info = recipe(name).info
    sched = recipe(name).schedule
    cfg = dataclasses.replace(cfg, **{f: getattr(sched, f) for f in ("batch_size", "epochs", "lr", "lr_drop",
                                                                       "warmup_iters", "passes")
                                      if getattr(cfg, f) is None},
                              train_split=cfg.train_split or info.train_split,
                              eval_split=cfg.eval_split or info.eval_split)
    if cfg.lr_drop is None:  # the recipe never drops the LR
        cfg.lr_drop = OFF
    _check_splits_and_domain(cfg, cache)
    dims = cache.dims
    model_cfg = config_for(name, video_dim=dims["video_dim"], query_dim=dims["query_dim"], tokens=dims["tokens"],
                           layers=len(dims["layers"]))
    model_cfg = override(model_cfg, dropout=cfg.dropout, droppath=cfg.droppath, hidden=cfg.hidden)
    loss_cfg = override(loss_config_for(name), **{f: getattr(cfg, f) for f in LOSS_WEIGHTS})
    dec_cfg = decode_config(name, cfg)
    cfg = dataclasses.replace(cfg, dropout=model_cfg.dropout, droppath=model_cfg.droppath, hidden=model_cfg.hidden,
                              **{f: getattr(loss_cfg, f) for f in LOSS_WEIGHTS}, nms=dec_cfg.nms or OFF,
                              nms_iou=dec_cfg.nms_iou, unit=OFF if dec_cfg.unit is None else dec_cfg.unit)
    return cfg, model_cfg, loss_cfg, dec_cfg


def _check_splits_and_domain(cfg: TrainConfig, cache: Cache):
    for f in ("train_split", "eval_split"):
        if getattr(cfg, f) not in cache.splits:
            raise ConfigError(f"{flag(f)} {shown(getattr(cfg, f))}: {cache.entry} has no such split; one of "
                              f"{', '.join(cache.splits)}")
    known = domains(cache)
    if recipe(cache.dataset).info.domains and cfg.domain is None:
        raise ConfigError(f"--domain: {cache.dataset} is trained per domain; pass one of {', '.join(known)}")
    if cfg.domain is not None and cfg.domain not in known:
        raise ConfigError(f"--domain {shown(cfg.domain)}: " + (f"{cache.entry} has domains {', '.join(known)}"
                                                                 if known else f"{cache.dataset} has no domains"))


def domains(cache: Cache) -> list[str]:
    return sorted({r.get("domain") for split in cache.splits for r in cache.records(split) if r.get("domain")})


# The reference warms QVHighlights up for 500 of its 6,780 iterations (30 epochs of 4 passes): a custom set's
# default warm-up (recipe.cap_warmup) is capped at that fraction of the run, so that a small set leaves warm-up as
# QVHighlights does. The six benchmarks keep the paper's schedules exactly (TVSum's 50 of 500 iterations included),
# and the demo's schedule is sized for the demo.
WARMUP_CAP = 500 / 6780


def fit_schedule(cfg: TrainConfig, default_warmup: bool, iterations: int, dataset: str) -> TrainConfig:
    """The schedule of a run of `iterations` steps: a custom set's default warm-up capped at WARMUP_CAP of them (one
    given as a flag is kept), and a warning for each part that cannot run as configured."""
    if default_warmup and recipe(dataset).cap_warmup:
        cfg = dataclasses.replace(cfg, warmup_iters=min(cfg.warmup_iters, round(WARMUP_CAP * iterations)))
    elif cfg.warmup_iters > iterations:
        warnings.warn(f"--warmup-iters {cfg.warmup_iters} is longer than the run ({iterations} iterations): the LR "
                      f"never reaches --lr {cfg.lr:g}")
    if cfg.lr_drop != OFF and cfg.lr_drop >= cfg.epochs:
        warnings.warn(f"--lr-drop {cfg.lr_drop} is not before the last epoch ({cfg.epochs}): the LR never drops")
    return cfg


def lr_factor(it: int, epoch: int, cfg: TrainConfig) -> float:
    """Linear warmup from warmup_ratio to 1 over warmup_iters iterations, then ×0.1 from epoch lr_drop on (OFF:
    never)."""
    factor = 1.0
    if it < cfg.warmup_iters:
        alpha = it / cfg.warmup_iters
        factor = cfg.warmup_ratio * (1 - alpha) + alpha
    if cfg.lr_drop != OFF and epoch >= cfg.lr_drop:
        factor *= 0.1
    return factor


# ----------------------------------------------------------------------------------------------- evaluation


def split_dataset(cache: Cache, split: str, role: str, domain: str | None = None,
                  source: Preloaded | None = None) -> GroundingDataset:
    """The usable samples of a split that a run uses in `role` ("training" or "evaluation"), in `domain` when one
    is given; a split with none is refused (CacheError) saying why, before any work is done on it."""
    data = GroundingDataset(cache, split, train=role == "training", source=source)
    before = len(data)
    if domain is not None:
        data.records = [r for r in data.records if r.domain == domain]
    if not data.records:
        raise CacheError(f"{cache.entry}: {role} split {split!r} has no usable sample: "
                         f"{_why_empty(data, before - len(data.records), domain)}")
    return data


def _why_empty(data: GroundingDataset, out_of_domain: int, domain: str | None) -> str:
    """Why no record of a split is usable: how many records each cause left out, and what to do."""
    total = len(data.cache.records(data.split))
    other_split = f"pass {'--train-split' if data.train else '--eval-split'} with another split"
    if total == 0:
        return f"the split has no records; add some to its annotation file and re-extract, or {other_split}"
    counts = [(data.missing, "without cached features (their videos failed to extract, or extraction has not reached "
                             f"them yet: `python -m r2.cache verify {data.cache.entry}` says which)"),
              (len(data.unusable), "whose annotations do not fit their video, first: " + ";".join(data.unusable[:1])),
              (total - data.missing - len(data.unusable) - out_of_domain,
               f"with videos shorter than {MIN_TRAIN_SECONDS:g} s (SPEC §4 leaves them out of training)"),
              (out_of_domain, f"outside domain {domain}")]
    advice = f"finish its extraction, or {other_split}" if data.missing else other_split
    return f"{total} records, " + ", ".join(f"{n} {why}" for n, why in counts if n) + f"; {advice}"


def query_counts(preds: list[dict], data: GroundingDataset) -> dict[str, int]:
    """How many queries were scored, how many the split has (its usable records and those without cached
    features), and how many of those are missing: the metrics say what they were computed on."""
    return {"scored": len(preds), "expected": len(data.records) + data.missing, "missing": data.missing}


def predictions_name(dataset: str, split: str) -> str:
    return f"hl_{split}_submission.jsonl" if dataset == "qvhighlights" else f"{split}_preds.jsonl"


# What a resumed run takes from the command line: the cache (checked to be the run's own), where and how it runs,
# and --epochs, which extends it. Every other setting is the run's own; a flag that would change one is refused.
RESUME_MAY_CHANGE = ("cache", "resume", "epochs", "device", "precision", "workers", "preload", "progress",
                     "compile")
SHOWN_ON_RESUME = ("batch_size", "lr", "lr_drop", "warmup_iters", "passes", "hidden", "dropout", "seed")


def resumed_config(given: TrainConfig, ckpt: dict) -> TrainConfig:
    """The config of a resumed run: its own settings, with the fields of RESUME_MAY_CHANGE as given."""
    saved = saved_config(ckpt)
    default = TrainConfig(cache=given.cache)
    for f in dataclasses.fields(TrainConfig):
        value = getattr(given, f.name)
        if f.name not in RESUME_MAY_CHANGE and value not in (getattr(default, f.name), getattr(saved, f.name)):
            raise ConfigError(f"{flag(f.name)} {shown(value)}: --resume {given.resume} continues the run with its "
                              f"own settings ({f.name} {shown(getattr(saved, f.name))}); drop {flag(f.name)}, or "
                              f"start a new run to change it")
    epochs = given.epochs or saved.epochs
    if epochs < ckpt["epoch"]:
        raise ConfigError(f"--epochs {epochs}: {given.resume} has trained {ckpt['epoch']} epochs already; leave "
                          f"--epochs out, or pass more to extend the run")
    return dataclasses.replace(saved, **{**{k: getattr(given, k) for k in RESUME_MAY_CHANGE}, "epochs": epochs})


def evaluate_checkpoint(checkpoint: str | Path, cache_path: str | Path, split: str | None = None,
                        out: str | Path | None = None, batch_size: int = 32, device: str = "auto",
                        domain: str | None = None, dataset: str | None = None,
                        allow_feature_source: bool = False) -> tuple[dict, Path]:
    """Predictions and metrics of a checkpoint (r2's, an official .pth or a zoo name) on one split of a cache
    (default: the dataset's evaluation split). Written to `out`, by default a new folder
    runs/eval-<checkpoint>-<cache>-<split>-<time>, so nothing the run folder holds is replaced.
    Returns (metrics, output folder)."""
    if out is not None:
        check_new_folder(out)  # before any work: a given --out is a new or empty folder
    checkpoint = checkpoint_file(checkpoint)
    ckpt = load_checkpoint(checkpoint, dataset)
    cache = Cache(cache_path)
    check_compatible(ckpt, cache, str(checkpoint), allow_feature_source)
    cfg = saved_config(ckpt)
    cfg, _, _, dec_cfg = resolve(dataclasses.replace(cfg, cache=str(cache_path), domain=domain or cfg.domain,
                                                     eval_split=split or cfg.eval_split), cache)
    split = cfg.eval_split
    dev = pick_device(device)
    model = build_model(ckpt).to(dev)
    data = split_dataset(cache, split, "evaluation", cfg.domain)
    preds, scores = evaluate_split(model, data, dec_cfg, dev, pick_precision("auto", dev), batch_size, 0)
    if out is None:
        name = Path(checkpoint).resolve().parent.name if Path(checkpoint).name in ("best.pt", "last.pt") else Path(
            str(checkpoint).replace(":", "-")).stem
        out = Path("runs") / f"eval-{name}-{Path(cache_path).stem}-{split}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics.write_submission(out / predictions_name(cache.dataset, split), preds)
    (out / f"{split}_metrics.json").write_text(json.dumps(
        {"split": split, "checkpoint": str(checkpoint), "cache": str(cache_path), **query_counts(preds, data),
         **scores}, indent=2))
    return scores, out


# ----------------------------------------------------------------------------------------------- training


class Trainer:
    """Owns one run. `cache` and `features` let several runs share one opened (and preloaded) cache: a sweep
    opens the cache and reads its features once, then hands both to every trial."""

    def __init__(self, cfg: TrainConfig, cache: Cache | None = None, features: Preloaded | None = None):
        self.cache = cache if cache is not None else Cache(cfg.cache)
        self.features = features
        self.cache_identity = cache_identity(self.cache)
        resume = None
        if cfg.resume:
            resume = load_checkpoint(Path(cfg.resume) / "last.pt")
            check_compatible(resume, self.cache, f"{cfg.resume}/last.pt")
            check_same_cache(resume, self.cache_identity, f"{cfg.resume}/last.pt")
            cfg = resumed_config(cfg, resume)
        elif cfg.out:
            _refuse_finished_work(Path(cfg.out))
        default_warmup = cfg.warmup_iters is None
        cfg, self.model_cfg, self.loss_cfg, self.dec_cfg = resolve(cfg, self.cache)
        self.rank, self.world = start_distributed(cfg.device)
        self.device = pick_device(cfg.device)
        cfg = dataclasses.replace(cfg, device=str(self.device), precision=precision_name(cfg.precision, self.device),
                                  workers=(4 if self.device.type == "cuda" else 0) if cfg.workers is None else
                                  cfg.workers)
        if cfg.batch_size % self.world:
            raise ConfigError(f"--batch-size {cfg.batch_size}: the global batch must be a multiple of the "
                              f"{self.world} processes")
        self.cfg = cfg
        self.autocast_dtype = pick_precision(cfg.precision, self.device)
        seed_everything(cfg.seed)

        self.train_set = self._dataset(cfg.train_split, "training")
        self.eval_set = self._dataset(cfg.eval_split, "evaluation")
        self.resident, line = resident_features(self.train_set, cfg.preload, self.device)
        if line and self.rank == 0:
            print(line)
        self.iters_per_epoch = cfg.passes * len(self._sampler(0))
        if self.iters_per_epoch == 0:
            raise ConfigError(f"--train-split {cfg.train_split}: {len(self.train_set)} training samples cannot feed "
                              f"{self.world} processes; train on fewer processes")
        self.cfg = cfg = fit_schedule(cfg, default_warmup, self.iters_per_epoch * cfg.epochs, self.cache.dataset)
        self.model = R2Model(self.model_cfg).to(self.device)
        self.ddp = None
        if self.world > 1:  # gradients averaged across ranks; TVSum/YouTube keep an unused boundary coefficient
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=not self.model_cfg.boundary)
        # what the steps and evaluations call: DDP (several processes) and torch.compile (--compile) wrap the model;
        # its parameters, state dict and checkpoints stay those of self.model
        self.train_model = self.ddp or self.model
        self.eval_model = self.model
        if cfg.compile:
            self.train_model = torch.compile(self.train_model)
            self.eval_model = self.train_model if self.ddp is None else torch.compile(self.model)
        self.criterion = Criterion(self.loss_cfg)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda it: lr_factor(it, it // self.iters_per_epoch, self.cfg))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.autocast_dtype == torch.float16)
        self.epoch = 0
        self.best = {"metric": metrics.headline(self.cache.dataset), "value": -math.inf, "epoch": -1}
        self.link_latest = resume is None  # a new run becomes <cache name>-latest once it has a best.pt
        if resume is not None:
            self.out = Path(cfg.resume)
            self._restore(resume)
            if self.rank == 0:
                print(f"resuming {self.out} after epoch {self.epoch} of {cfg.epochs}: the run keeps its settings "
                      f"({', '.join(f'{k} {getattr(cfg, k)}' for k in SHOWN_ON_RESUME)}; the rest as in "
                      f"{self.out / 'config.json'})")
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            out = [Path(cfg.out) if cfg.out else Path("runs") / f"{Path(cfg.cache).stem}-{stamp}"]
            if self.world > 1:
                torch.distributed.broadcast_object_list(out, src=0)  # every rank uses rank 0's folder
            self.out = out[0]
            self.cfg = dataclasses.replace(cfg, out=str(self.out))
            if self.rank == 0:
                self.out.mkdir(parents=True, exist_ok=True)
                (self.out / "config.json").write_text(json.dumps(self.describe(), indent=2))

    def _sampler(self, epoch: int, part: int = 0) -> GlobalBatchSampler:
        seed = self.cfg.seed * 1000 + epoch * 10 + part
        return GlobalBatchSampler(len(self.train_set), self.cfg.batch_size, seed, self.rank, self.world)

    def _dataset(self, split: str, role: str) -> GroundingDataset:
        return split_dataset(self.cache, split, role, self.cfg.domain, self.features)

    def describe(self) -> dict:
        return {"dataset": self.cache.dataset, "cache": str(self.cfg.cache), **dataclasses.asdict(self.cfg),
                "model_config": dataclasses.asdict(self.model_cfg), "loss_config": dataclasses.asdict(self.loss_cfg),
                "decode_config": dataclasses.asdict(self.dec_cfg), "fingerprint": self.cache.fingerprint,
                "dims": self.cache.dims, "cache_identity": self.cache_identity, "headline": self.best["metric"],
                "autocast": str(self.autocast_dtype), "train_samples": len(self.train_set),
                "eval_samples": len(self.eval_set), "iterations": self.iters_per_epoch * self.cfg.epochs}

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
        state = {**checkpoint_meta(self.cache, self.cache_identity, dataclasses.asdict(self.cfg), self.model_cfg,
                                   train_frames), "model": self.model.state_dict(), "epoch": self.epoch, "best": self.best}
        if full:
            state.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                         scaler=self.scaler.state_dict(),
                         rng={"torch": torch.get_rng_state(),
                              "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []})
        save(state, path)

    def _batches(self):
        """This epoch's training batches: `passes` passes, each with its own seeded order and positive frames."""
        for part in range(self.cfg.passes):
            self.train_set.seed = self.cfg.seed * 1000 + self.epoch * 10 + part
            sampler = self._sampler(self.epoch, part)
            if self.resident is not None:  # --preload cpu|cuda|auto: batches indexed where the features live
                yield from self.resident.batches(sampler)
            else:  # its own generator: the loader's base-seed draw leaves the global RNG (dropout's) untouched
                yield from DataLoader(self.train_set, batch_sampler=sampler, collate_fn=collate,
                                      num_workers=self.cfg.workers, pin_memory=self.device.type == "cuda",
                                      generator=torch.Generator().manual_seed(self.train_set.seed))

    def train_epoch(self) -> dict[str, float]:
        cfg = self.cfg
        self.model.train()
        bar = tqdm(total=self.iters_per_epoch, desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                   disable=not cfg.progress or self.rank != 0, leave=False)

        def shown(losses):
            bar.update()
            bar.set_postfix(loss=f"{float(losses['loss'].detach()):.4f}")

        means = engine.train_epoch(self.train_model, self.criterion, self.optimizer, self.scaler, self._batches(),
                                   self.device, self.autocast_dtype, cfg.grad_clip, params=self.model.parameters(),
                                   scheduler=self.scheduler, where=f"epoch {self.epoch + 1}", on_step=shown)
        bar.close()
        if self.world > 1:  # the logged losses are the mean over ranks
            values = torch.tensor(list(means.values()), dtype=torch.float64)
            torch.distributed.all_reduce(values)
            means = dict(zip(means, (values / self.world).tolist()))
        return means

    def _evaluate_and_save(self, train_losses: dict[str, float], start: float):
        cfg = self.cfg
        preds, scores = evaluate_split(self.eval_model, self.eval_set, self.dec_cfg, self.device,
                                       self.autocast_dtype, cfg.batch_size // self.world, cfg.workers)
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
                {"epoch": self.epoch, "split": cfg.eval_split, "headline": self.best["metric"],
                 **query_counts(preds, self.eval_set), **scores}, indent=2))
            if self.link_latest:
                link_latest(self.out, Path(cfg.cache).stem)
                self.link_latest = False
        _append_csv(self.out / "log.csv", row)
        self._save(self.out / "last.pt", full=True)
        tqdm.write(f"epoch {self.epoch}/{cfg.epochs} loss {train_losses['loss']:.4f} | "
                   f"{self.best['metric']} {headline:.2f}{' (best)' if improved else ''} | {row['seconds']:.1f} s")

    def fit(self) -> dict:
        cfg = self.cfg
        if self.rank == 0:
            print(f"run folder {self.out} | {len(self.train_set)} train / {len(self.eval_set)} {cfg.eval_split} samples"
                  f" | {sum(p.numel() for p in self.model.parameters() if p.requires_grad):,} parameters | "
                  f"{self.device} {cfg.precision} | {self.world} process(es) | warm-up {cfg.warmup_iters} of "
                  f"{self.iters_per_epoch * cfg.epochs} iterations | best by {self.best['metric']}")
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


def _refuse_finished_work(out: Path):
    """A new run writes only into a new or empty folder: never over another run's best.pt and log (said as such,
    with --resume where it can continue), nor over any other file."""
    held = [name for name in ("config.json", "log.csv", "last.pt", "best.pt") if out.is_dir() and (out / name).exists()]
    if not held:
        check_new_folder(out, ignore=("output.log",))  # a sweep trial's log, opened before its Trainer starts
        return
    way_out = (f"continue it with --resume {shown(out)}" if "last.pt" in held else
               "it has no last.pt to resume (it stopped before its first epoch ended): delete the folder")
    raise ConfigError(f"--out {shown(out)}: already holds a run ({', '.join(held)}); {way_out}, or pass another --out")


def link_latest(run: Path, name: str):
    """Point <name>-latest beside the run folder at it (a relative link), atomically: the new link is made under a
    temporary name and renamed over the old one, so a reader always finds one of the two runs. A file or folder
    of that name that is not a link is left alone, with a warning."""
    link = run.parent / f"{name}-latest"
    if link.exists() and not link.is_symlink():
        warnings.warn(f"{link} is not a link; not pointing it at {run}", stacklevel=2)
        return
    tmp = run.parent / f".{link.name}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run.name, target_is_directory=True)
    os.replace(tmp, link)


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
