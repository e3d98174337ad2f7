"""Training report: loss log, loss curves, per-epoch images in an HTML page, optional visdom."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from util.html import HTML
from util.io import atomic_path, write_json_atomic
from util.misc import tensor2im

#: Validation keys of baselines (``val_fill_ssim_patch``...), drawn beside their metric.
BASELINE_PREFIXES = ("fill_", "const_")


def validation_families(keys: list[str]) -> dict[str, list[str]]:
    """Group validation keys by metric (``val_ssim_patch`` and ``val_fill_ssim_patch`` ->
    ``ssim``; ``val_rhdr_head`` and ``val_const_rhdr`` -> ``rhdr``), one plot per group, so
    that metrics on different scales (PSNR in dB, RHDR in %, SSIM) never share an axis."""
    families: dict[str, list[str]] = {}
    for key in keys:
        name = key.removeprefix("val_")
        for prefix in BASELINE_PREFIXES:
            name = name.removeprefix(prefix)
        families.setdefault(name.split("_")[0], []).append(key)
    return families


class Visualizer:
    """Writes ``loss_log.txt``, ``web/index.html`` (newest epoch first, loss-curve PNG) and,
    with ``--display_id > 0``, sends the same to a visdom server.

    A missing visdom package or server prints one warning and training goes on; the HTML
    report is written regardless (unless ``--no_html``).
    """

    def __init__(self, opt: argparse.Namespace) -> None:
        self.name = opt.name
        self.root = Path(opt.checkpoints_dir) / opt.name
        self.web_dir = self.root / "web"
        self.img_dir = self.web_dir / "images"
        self.use_html = opt.isTrain and not getattr(opt, "no_html", False)
        self.log_path = self.root / "loss_log.txt"
        self.history_path = self.web_dir / "loss_history.json"
        self.root.mkdir(parents=True, exist_ok=True)
        # A resumed run continues its curves; a new run with the same name starts afresh.
        resume = getattr(opt, "continue_train", False)
        self.history: dict[str, list] = self._load_history() if resume else {}
        self.vis = None
        if getattr(opt, "display_id", 0) > 0:
            self.vis = _connect_visdom(opt)
            self.display_id = opt.display_id
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(f"================ Training Loss ({time.strftime('%c')}) ================\n")

    # ------------------------------------------------------------------ losses
    def print_current_losses(
        self, epoch: int, iters: int, losses: Mapping[str, float], t_comp: float, t_data: float
    ) -> str:
        """Format the losses of one iteration, print them and append them to loss_log.txt."""
        message = f"(epoch: {epoch}, iters: {iters}, time: {t_comp:.3f}, data: {t_data:.3f}) "
        message += " ".join(f"{k}: {v:.4f}" for k, v in losses.items())
        tqdm.write(message)  # keeps progress bars intact
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(message + "\n")
        return message

    def print_message(self, message: str) -> None:
        """Print a line and append it to loss_log.txt (e.g. why training stopped)."""
        tqdm.write(message)
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(message + "\n")

    def plot_current_losses(self, epoch_progress: float, losses: Mapping[str, float]) -> None:
        """Add a point (x = fractional epoch) to the curves; send them to visdom if live."""
        self.history.setdefault("x", []).append(float(epoch_progress))
        keys = self.history.setdefault("keys", list(losses))
        for key in losses:
            if key not in keys:
                keys.append(key)
        self.history.setdefault("values", []).append({k: float(v) for k, v in losses.items()})
        if self.vis is not None:
            self._visdom_call(
                self.vis.line,
                X=np.array(self.history["x"]),
                Y=np.array([[row.get(k, np.nan) for k in keys] for row in self.history["values"]]),
                opts={
                    "title": f"{self.name} loss over time",
                    "legend": keys,
                    "xlabel": "epoch",
                    "ylabel": "loss",
                },
                win=str(self.display_id),
            )

    def log_metrics(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """Append validation metrics to loss_log.txt and to the curves of the HTML report."""
        message = f"(epoch: {epoch}, validation) " + " ".join(
            f"{k}: {v:.4f}" for k, v in metrics.items()
        )
        tqdm.write(message)
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(message + "\n")
        self.history.setdefault("val", []).append({"epoch": epoch, **metrics})
        write_json_atomic(self.history_path, self.history)
        if self.use_html:
            self.save_loss_curve()

    # ------------------------------------------------------------------ images
    def display_current_results(self, visuals: Mapping[str, Tensor], epoch: int) -> Path | None:
        """Save the first image of each visual as ``web/images/epoch<NNN>_<name>.png`` and
        rewrite ``web/index.html``. Returns the HTML path (None when HTML is off)."""
        if self.vis is not None:
            images = [tensor2im(v).transpose(2, 0, 1) for v in visuals.values()]
            self._visdom_call(
                self.vis.images,
                images,
                nrow=len(images),
                win=str(self.display_id + 1),
                opts={"title": "images"},
            )
        if not self.use_html:
            return None
        self.img_dir.mkdir(parents=True, exist_ok=True)
        for label, image in visuals.items():
            _save_png(tensor2im(image), self.img_dir / f"epoch{epoch:03d}_{label}.png")
        write_json_atomic(self.history_path, self.history)
        return self.write_html(list(visuals))

    def write_html(self, labels: list[str]) -> Path:
        curve = self.save_loss_curve()
        page = HTML(self.web_dir, f"Experiment name = {self.name}", refresh=0)
        if curve is not None:
            page.add_header("losses")
            page.add_images([f"images/{curve.name}"], ["loss curves"], width=640)
        epochs = sorted({int(p.name[5:8]) for p in self.img_dir.glob("epoch*_*.png")}, reverse=True)
        for n in epochs:
            page.add_header(f"epoch [{n}]")
            present = [lab for lab in labels if (self.img_dir / f"epoch{n:03d}_{lab}.png").exists()]
            page.add_images([f"images/epoch{n:03d}_{lab}.png" for lab in present], present)
        return page.save()

    def save_loss_curve(self) -> Path | None:
        """Plot every loss against the fractional epoch to ``web/images/loss_curve.png``."""
        if not self.history.get("x") and not self.history.get("val"):
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        val = self.history.get("val", [])
        families = validation_families([k for k in val[-1] if k != "epoch"]) if val else {}
        ncols = (len(families) + 1) // 2
        fig = plt.figure(figsize=(8 + 3.2 * ncols, 4.5), dpi=80)
        grid = fig.add_gridspec(2, 2 + ncols)
        ax = fig.add_subplot(grid[:, :2])
        x = np.array(self.history.get("x", []))
        for key in self.history.get("keys", []):
            y = np.array([row.get(key, np.nan) for row in self.history["values"]], dtype=float)
            ax.plot(x, y, label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.set_yscale("symlog", linthresh=1e-2)
        ax.grid(alpha=0.3)
        if self.history.get("keys"):  # the untrained model's validation comes before any loss
            ax.legend(fontsize=7, ncol=2)
        epochs = [row["epoch"] for row in val]
        for i, (family, keys) in enumerate(families.items()):
            vax = fig.add_subplot(grid[i % 2, 2 + i // 2])
            values = np.array([[row.get(k, np.nan) for k in keys] for row in val], dtype=float)
            for key, column in zip(keys, values.T, strict=True):  # baselines dashed, no markers
                baseline = key.removeprefix("val_").startswith(BASELINE_PREFIXES)
                vax.plot(
                    epochs,
                    column,
                    linestyle="--" if baseline else "-",
                    marker=None if baseline else "o",
                    markersize=3,
                    label=key.removeprefix("val_"),
                )
            positive = values[np.isfinite(values) & (values > 0)]
            if positive.size and (values[np.isfinite(values)] >= 0).all():
                lo, hi = float(positive.min()), float(positive.max())
                if hi > 5 * lo:  # e.g. an untrained model's epoch 0 far above the rest
                    vax.set_yscale("symlog", linthresh=lo)
                    ticks = np.unique([float(f"{t:.2g}") for t in np.geomspace(lo, hi, 5)])
                    vax.set_yticks(ticks, [f"{t:g}" for t in ticks])
                    vax.minorticks_off()
            vax.set_title(f"validation: {family}", fontsize=9)
            vax.tick_params(labelsize=7)
            vax.grid(alpha=0.3)
            vax.legend(fontsize=6)
        fig.tight_layout()
        path = self.img_dir / "loss_curve.png"
        self.img_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
        return path

    # ------------------------------------------------------------------ internals
    def _load_history(self) -> dict[str, list]:
        if self.history_path.is_file():
            try:
                return json.loads(self.history_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                print(f"warning: ignoring unreadable {self.history_path}")
        return {}

    def _visdom_call(self, fn, *args, **kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a dead server must never stop training
            print(f"warning: visdom display failed ({exc}); live display is off from now on")
            self.vis = None


def _connect_visdom(opt: argparse.Namespace):
    try:
        import visdom
    except ImportError:
        print(
            "warning: --display_id > 0 but visdom is not installed "
            "(pip install --no-build-isolation visdom); live display is off"
        )
        return None
    try:
        vis = visdom.Visdom(
            server=opt.display_server,
            port=opt.display_port,
            env=opt.display_env,
            raise_exceptions=True,
        )
        if not vis.check_connection(timeout_seconds=2):
            raise ConnectionError("no answer")
        return vis
    except Exception as exc:  # noqa: BLE001
        print(
            f"warning: no visdom server at {opt.display_server}:{opt.display_port} ({exc}); "
            "live display is off, the HTML report is still written"
        )
        return None


def _save_png(image: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
