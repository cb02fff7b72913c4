"""lunakit.train: the training apps on a tiny phantom dataset (a few seconds of training each).

Checks: the loss falls, exact resume, the files of a run, fine-tuning freezes what it
should, two gloo processes end with identical weights, the per-rank balance of the
samplers, and every bad input gives one line and exit 2.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from lunakit.cli import main as cli_main
from lunakit.models.checkpoint import load_checkpoint, save_checkpoint
from lunakit.models.unet import UNetWrapper
from lunakit.train.config import TrainConfig
from lunakit.train.distributed import EvalShardSampler, GroupedBatchSampler, TrainShardSampler
from lunakit.train.loop import train

SHAPE = (32, 64, 64)  # the smallest scan a 32 x 48 x 48 crop and a 64 x 64 window both fit


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """6 phantom scans (2 validate with val_stride 3) and their volume cache."""
    from lunakit.io.cache import prepcache
    from lunakit.synth import make_dataset

    root = tmp_path_factory.mktemp("tiny")
    data = make_dataset(root / "luna", n_scans=6, seed=3, shape=SHAPE)
    prepcache(data, root / "cache", progress=False)
    return {"data": data, "cache": root / "cache", "root": root}


def _config(tiny: dict[str, Path], out: Path, **kw) -> TrainConfig:
    # conv_channels 4: a quarter of the book's classifier cost; the mechanics under test are the same
    base = dict(
        task="classify",
        data=str(tiny["data"]),
        cache=str(tiny["cache"]),
        out=str(out),
        epochs=1,
        batch_size=8,
        epoch_size=16,
        val_stride=3,
        seed=5,
        deterministic=True,
        conv_channels=4,
    )
    base.update(kw)
    return TrainConfig(**base)


def _metrics(run_dir: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        line.pop("time_s")
    return lines


def _state_hash(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Training works


def test_classify_loss_falls_and_run_files(tiny, tmp_path):
    """A few epochs over the same 32 crops: the training loss falls; the run folder holds
    what docs/training.md promises, and the files load back."""
    out = tmp_path / "cls"
    result = train(
        _config(tiny, out, epochs=4, balanced=1, epoch_size=24, optimizer="adam", val_every=2), progress=False
    )
    losses = [r["train"]["loss"] for r in result.history]
    assert losses[-1] < 0.7 * losses[0], losses

    lines = _metrics(out)
    assert [line["epoch"] for line in lines] == [1, 2, 3, 4]
    assert lines[0]["val"] is None and lines[2]["val"] is None  # --val-every 2
    for key in ("loss", "loss_pos", "loss_neg", "precision", "recall", "f1", "auc", "tp", "fn", "fp", "tn"):
        assert key in lines[-1]["val"]
    assert lines[-1]["val"]["count"] == _val_candidates(tiny)  # every candidate of the validation scans, once
    best = lines[-1]["best"]
    assert best["metric"] == "f1"
    assert best["value"] == max(line["val"]["f1"] for line in lines if line["val"])

    model, meta = load_checkpoint(out / "best.pt", kind="cls")  # usable by `lunakit export`
    assert meta["extra"]["epoch"] == best["epoch"]
    assert meta["config"]["task"] == "classify" and meta["config_class"].endswith("TrainConfig")
    torch.jit.script(model)
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["epoch"] == 4 and state["config"]["epochs"] == 4
    assert set(state["rng"]) >= {"torch", "numpy", "python"}
    assert sorted(p.name for p in (out / "figures").iterdir()) == [f"roc_epoch{e:03d}.png" for e in (2, 4)]
    if _has_tensorboard():
        assert any((out / "tensorboard").iterdir())


def _val_candidates(tiny, val_stride: int = 3) -> int:
    from lunakit.io.luna import load_candidates, split_series

    candidates = load_candidates(tiny["data"])
    _, val = split_series({c.series_uid for c in candidates}, val_stride)
    return sum(c.series_uid in val for c in candidates)


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def test_segment_trains_and_writes_overlays(tiny, tmp_path):
    out = tmp_path / "seg"
    result = train(
        _config(
            tiny,
            out,
            task="segment",
            balanced=None,
            epochs=2,
            batch_size=8,
            epoch_size=16,
            augment="flip,offset=0.03,scale,rotate,noise",
            best_metric="f1",
        ),
        progress=False,
    )
    losses = [r["train"]["loss"] for r in result.history]
    assert losses[-1] < losses[0], losses
    val = result.history[-1]["val"]
    assert val["tp"] + val["fn"] > 0 and 0.0 <= val["recall"] <= 1.0
    assert result.best["metric"] == "f1"
    assert result.best["value"] == max(r["val"]["f1"] for r in result.history)
    model, meta = load_checkpoint(out / "best.pt", kind="seg")
    assert isinstance(model, UNetWrapper) and model.pool == "avg"  # the book's, by default
    assert meta["model_args"]["pool"] == "avg" and meta["config"]["pool"] == "avg"
    assert (out / "figures" / "overlay_epoch002.png").stat().st_size > 1000


def test_resume_reproduces_the_uninterrupted_run(tiny, tmp_path):
    """2 epochs straight == 1 epoch, stop, --resume to 2 (augmentation on, so RNG matters)."""
    kw = dict(epochs=2, augment="flip,offset,scale,rotate,noise", balanced=2)
    straight = train(_config(tiny, tmp_path / "straight", **kw), progress=False)
    interrupted = tmp_path / "resumed"
    train(_config(tiny, interrupted, **{**kw, "epochs": 1}), progress=False)
    # through the CLI, as a user resumes: only --epochs changes
    assert cli_main(["train", "classify", "--resume", str(interrupted), "--epochs", "2", "--no-progress"]) == 0
    assert _metrics(interrupted) == _metrics(tmp_path / "straight")
    resumed_model, _ = load_checkpoint(interrupted / "best.pt")
    straight_model, _ = load_checkpoint(tmp_path / "straight" / "best.pt")
    assert _state_hash(resumed_model) == _state_hash(straight_model)
    final = torch.load(interrupted / "state.pt", weights_only=True)["model"]
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(final[name], tensor.cpu()), name


def test_resume_drops_metrics_of_an_unfinished_epoch(tiny, tmp_path):
    """A metrics line written after the last state (killed in between) is dropped on resume."""
    out = tmp_path / "run"
    train(_config(tiny, out, epochs=1), progress=False)
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 2, "train": {}, "val": None}) + "\n")
    assert cli_main(["train", "classify", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    assert [line["epoch"] for line in _metrics(out)] == [1, 2]
    assert _metrics(out)[1]["train"]  # the real epoch 2, not the stale line


def test_malignancy_finetune_trains_only_the_head(tiny, tmp_path):
    source = tmp_path / "cls"
    train(_config(tiny, source, epochs=1), progress=False)
    out = tmp_path / "mal"
    result = train(
        _config(
            tiny,
            out,
            task="malignancy",
            finetune=str(source / "best.pt"),
            finetune_depth=1,
            val_stride=2,
            epochs=1,
            epoch_size=16,
        ),
        progress=False,
    )
    assert result.best["metric"] == "auc"
    cls_model, _ = load_checkpoint(source / "best.pt", kind="cls")
    mal_model, _ = load_checkpoint(out / "best.pt", kind="mal")
    cls_state, mal_state = cls_model.state_dict(), mal_model.state_dict()
    for name in cls_state:
        if name.endswith(("weight", "bias")) and not name.startswith("tail_batchnorm"):
            frozen = not name.startswith("head_linear")
            assert torch.equal(cls_state[name], mal_state[name]) == frozen, name


# ---------------------------------------------------------------------------------------------
# Distributed


def test_train_shards_keep_the_balance_per_rank():
    period, world, length = 3, 2, 21  # ratio 2: positions 0, 3, 6, ... are positives
    shards = [list(TrainShardSampler(length, r, world, period)) for r in range(world)]
    assert len(shards[0]) == len(shards[1]) == 12  # padded to whole periods on every rank
    for shard in shards:
        is_positive = [i % period == 0 for i in shard]
        assert is_positive == [k % period == 0 for k in range(len(shard))]  # 1 positive, 2 negatives, ...
    assert set(shards[0]) | set(shards[1]) == set(range(length))
    evals = [list(EvalShardSampler(7, r, 3)) for r in range(3)]
    assert sorted(sum(evals, [])) == list(range(7))
    batches = list(GroupedBatchSampler([0, 1, 2, 3, 4, 5], [0, 0, 0, 1, 1, 2], batch_size=2))
    assert batches == [[0, 1], [2], [3, 4], [5]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, config: TrainConfig, hash_dir: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    result = train(config, progress=False)
    history = [{k: v for k, v in record.items() if k != "time_s"} for record in result.history]
    Path(hash_dir, f"rank{rank}.json").write_text(json.dumps({"hash": _state_hash(result.model), "history": history}))


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_two_gloo_ranks_end_with_identical_weights(tiny, tmp_path, ema):
    """With --ema the compared model is the average (its batch-norm statistics averaged over the ranks)."""
    import torch.multiprocessing as mp

    out = tmp_path / "ddp"
    config = _config(tiny, out, epochs=1, batch_size=4, augment="flip,noise", ema=ema)
    mp.spawn(_ddp_worker, args=(2, _free_port(), config, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["hash"] == ranks[1]["hash"]
    assert ranks[0]["history"] == ranks[1]["history"]  # metrics reduced over both ranks
    val = ranks[0]["history"][0]["val"]
    assert val["count"] == _val_candidates(tiny)  # the validation set split between ranks, each counted once
    assert ranks[0]["history"][0]["train"]["count"] == 16  # 8 per rank
    model, _ = load_checkpoint(out / "best.pt")  # written by rank 0
    assert _state_hash(model) == ranks[0]["hash"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit 2


def _run_cli(capsys, argv: list[str]) -> tuple[int, str]:
    code = cli_main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("lunakit: error:")]
    return code, errors[-1] if errors else ""


def _train_args(tiny, out: Path, task: str = "classify", **extra) -> list[str]:
    args = [
        "train",
        task,
        "--data",
        str(tiny["data"]),
        "--cache",
        str(tiny["cache"]),
        "--out",
        str(out),
        "--epoch-size",
        "8",
        "--batch-size",
        "4",
        "--val-stride",
        "3",
        "--no-progress",
    ]
    for key, value in extra.items():
        args += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return args


def _no_positive_root(tiny, root: Path) -> Path:
    """The tiny dataset's scans with tables that annotate no nodule in them (the one
    annotation names a scan that is not there)."""
    root.mkdir()
    for subset in tiny["data"].glob("subset*"):
        (root / subset.name).symlink_to(subset)
    header = (tiny["data"] / "annotations.csv").read_text().splitlines()[0]
    (root / "annotations.csv").write_text(header + "\n1.2.3.404,0.0,0.0,0.0,5.0\n")
    rows = (tiny["data"] / "candidates.csv").read_text().splitlines()
    (root / "candidates.csv").write_text("\n".join([rows[0]] + [r for r in rows[1:] if r.endswith(",0")]) + "\n")
    return root


def _bad_excluded_root(tiny, root: Path) -> Path:
    """The tiny dataset with an annotations_excluded.csv whose coordinate is not a number."""
    root.mkdir()
    for item in tiny["data"].iterdir():
        if item.name != "annotations_excluded.csv":
            (root / item.name).symlink_to(item)
    (root / "annotations_excluded.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2.3,abc,0,0,1\n")
    return root


def test_bad_input_one_line_exit_2(tiny, tmp_path, capsys):
    seg_ckpt = save_checkpoint(tmp_path / "seg.pt", UNetWrapper(), "seg")
    max_ckpt = save_checkpoint(tmp_path / "max.pt", UNetWrapper(pool="max"), "seg")
    cases = {
        "missing data root": (_train_args(tiny, tmp_path / "a") + ["--data", str(tmp_path / "nowhere")], "not found"),
        "cache missing, no prepcache": (
            _train_args(tiny, tmp_path / "b", cache=tmp_path / "nocache", no_prepcache=True),
            "cache folder not found",
        ),
        "no positives": (
            _train_args(tiny, tmp_path / "c", data=_no_positive_root(tiny, tmp_path / "nopos")),
            "no positive",
        ),
        "unknown augmentation": (_train_args(tiny, tmp_path / "d", augment="flip,warp"), "unknown augmentation 'warp'"),
        "finetune of the wrong kind": (
            _train_args(tiny, tmp_path / "e", "malignancy", finetune=seg_ckpt),
            "holds a 'seg' model",
        ),
        "finetune file missing": (
            _train_args(tiny, tmp_path / "f", "segment", finetune=tmp_path / "none.pt"),
            "no such file",
        ),
        "bad epochs": (_train_args(tiny, tmp_path / "g", epochs=0), "--epochs must be"),
        "finetune depth without finetune": (_train_args(tiny, tmp_path / "h", finetune_depth=2), "needs --finetune"),
        "best metric unknown": (_train_args(tiny, tmp_path / "j", "segment", best_metric="auc"), "--best-metric"),
        "fn weight negative": (_train_args(tiny, tmp_path / "k", "segment", fn_weight=-1), "--fn-weight"),
        "negatives of 1": (_train_args(tiny, tmp_path / "l", "segment", negatives=1), "--negatives must be"),
        "bce weight negative": (_train_args(tiny, tmp_path / "m", "segment", bce_weight=-2), "--bce-weight"),
        "malformed excluded table": (
            _train_args(
                tiny, tmp_path / "n", "segment", negatives=0.5, data=_bad_excluded_root(tiny, tmp_path / "badexcl")
            ),
            "annotations_excluded.csv: line 2, column coordX: not a number",
        ),
        "unknown pooling": (
            _train_args(tiny, tmp_path / "o", "segment", pool="median"),
            "--pool must be one of avg, max, got 'median'",
        ),
        "finetune across poolings": (
            _train_args(tiny, tmp_path / "p", "segment", finetune=max_ckpt),
            "was trained with max pooling (pass --pool max",
        ),
        "resume of nothing": (["train", "classify", "--resume", str(tmp_path / "empty")], "no state.pt"),
        "missing --out": (
            ["train", "classify", "--data", str(tiny["data"]), "--cache", str(tiny["cache"])],
            "--out required",
        ),
    }
    if not torch.cuda.is_available():
        cases["cuda without a GPU"] = (_train_args(tiny, tmp_path / "i", device="cuda"), "no CUDA GPU")
    for name, (argv, expected) in cases.items():
        code, line = _run_cli(capsys, argv)
        assert code == 2, name
        assert expected in line, (name, line)
    for refused in "abcdefghijklmnop":  # nothing written for a refused run
        assert not (tmp_path / refused).exists(), refused


def test_existing_run_and_conflicting_resume_are_refused(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    train(_config(tiny, out, epochs=1, epoch_size=8), progress=False)
    code, line = _run_cli(capsys, _train_args(tiny, out))
    assert code == 2 and "already holds a training run" in line
    code, line = _run_cli(capsys, ["train", "classify", "--resume", str(out), "--lr", "0.5", "--epochs", "2"])
    assert code == 2 and "--lr 0.5 differs" in line
    code, line = _run_cli(capsys, ["train", "segment", "--resume", str(out), "--epochs", "2"])
    assert code == 2 and "holds a classify run" in line
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "state.pt").write_bytes(b"not a torch file")
    code, line = _run_cli(capsys, ["train", "classify", "--resume", str(tmp_path / "junk")])
    assert code == 2 and "state.pt" in line


@pytest.mark.parametrize("option", [{"negatives": 0.5}, {"bce_weight": 1.0}, {"fn_weight": 2.0}, {"pool": "max"}])
def test_segment_only_options_are_refused_for_classify(tmp_path, option):
    from lunakit.train.config import TrainError

    with pytest.raises(TrainError, match="segment only"):
        TrainConfig(task="classify", data=str(tmp_path), cache=str(tmp_path), out=str(tmp_path / "o"), **option)


def test_a_segment_config_from_before_the_pool_option_reads_as_max(tmp_path):
    stored = TrainConfig(task="segment", data=str(tmp_path), cache=str(tmp_path), out=str(tmp_path / "o")).to_dict()
    assert stored.pop("pool") == "avg"
    assert TrainConfig.from_dict(stored).pool == "max"  # what those runs trained with
    assert TrainConfig.from_dict({**stored, "pool": "avg"}).pool == "avg"


def test_resample_mm_trains_on_resampled_volumes_and_export_carries_it(tiny, checkpoints, tmp_path, capsys):
    """--resample-mm: the cache is rebuilt at that spacing (its record says so, its geometry has
    it, its size follows the hand rule), the checkpoint's config keeps it, and `lunakit export`
    writes it into the bundle's options, refusing checkpoints of different spacings."""
    from lunakit.io import ct
    from lunakit.io.cache import VolumeCache

    cache, out = tmp_path / "cache", tmp_path / "run"
    code, line = _run_cli(
        capsys, _train_args({**tiny, "cache": cache}, out, conv_channels=4, resample_mm="0.8,0.6,0.6")
    )
    assert code == 0, line
    volumes = VolumeCache(cache)
    uid = volumes.series_uids()[0]
    record, scan = volumes.metadata(uid), volumes.get(uid)
    assert record["resample_mm"] == [0.8, 0.6, 0.6]
    np.testing.assert_allclose(scan.geometry.spacing_xyz, [0.6, 0.6, 0.8])
    source = ct.load(record["source"]["path"])
    own = np.asarray(source.geometry.spacing_xyz[::-1])
    expected = [int(np.floor((n - 1) * k / t + 1e-6)) + 1 for n, k, t in zip(source.hu.shape, own, (0.8, 0.6, 0.6))]
    assert list(scan.hu.shape) == expected
    assert not volumes.is_current(uid) and volumes.is_current(uid, resample_mm=(0.8, 0.6, 0.6))
    assert list(load_checkpoint(out / "best.pt")[1]["config"]["resample_mm"]) == [0.8, 0.6, 0.6]
    # that cache at another spacing, with --no-prepcache: the line names the command that fills it
    argv = _train_args({**tiny, "cache": cache}, tmp_path / "run2", resample_mm="1,0.6,0.6", no_prepcache=True)
    code, line = _run_cli(capsys, argv)
    assert code == 2 and "not cached at that spacing" in line and f"--cache {cache} --resample-mm 1,0.6,0.6`" in line

    def export(seg: Path, *options: str) -> tuple[int, str]:
        bundle = tmp_path / f"bundle{len(list(tmp_path.glob('bundle*')))}"
        argv = ["export", "--seg", str(seg), "--cls", str(out / "best.pt"), "--out", str(bundle)]
        code, line = _run_cli(capsys, argv + [f"--option={o}" for o in options])
        return code, line if code else json.loads((bundle / "manifest.json").read_text())["options"]["resample_mm"]

    # a segmenter trained at the scans' own voxels beside a classifier trained resampled: refused
    code, line = export(checkpoints["seg"])
    assert code == 2 and "trained at different resample_mm" in line
    seg, meta = load_checkpoint(checkpoints["seg"])
    resampled_seg = tmp_path / "seg.pt"
    save_checkpoint(resampled_seg, seg, kind="seg", config={"resample_mm": [0.8, 0.6, 0.6]})
    assert export(resampled_seg) == (0, [0.8, 0.6, 0.6])
    code, line = export(resampled_seg, "resample_mm=[1, 1, 1]")
    assert code == 2 and "the checkpoints were trained at (0.8, 0.6, 0.6)" in line
    # checkpoints run without a bundle (analyze, validate, mine-negatives) take the same spacing
    from lunakit.io.luna import find_scans

    scan = next(iter(find_scans(tiny["data"]).values()))
    run = ["analyze", str(scan), "--seg", str(resampled_seg), "--cls", str(out / "best.pt"), "--quiet"]
    assert _run_cli(capsys, [*run, "--out", str(tmp_path / "analyzed")])[0] == 0
    findings = json.loads((tmp_path / "analyzed" / "findings.json").read_text())
    assert findings["options"]["resample_mm"] == [0.8, 0.6, 0.6]
    code, line = _run_cli(capsys, [*run, "--out", str(tmp_path / "refused"), "--option", "resample_mm=[1, 1, 1]"])
    assert code == 2 and "analyze: --option resample_mm=[1.0, 1.0, 1.0], the checkpoints were trained at" in line
    assert not (tmp_path / "refused").exists()
