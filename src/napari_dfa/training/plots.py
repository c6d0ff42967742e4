"""PNG plots of a training run: loss curves, per-class Dice, bias trajectory b_c (matplotlib Agg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _figure(figsize=(6, 4)):
    import matplotlib

    matplotlib.use("Agg", force=False)  # a headless backend; never opens a window
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=100)


def _color(rgb):
    return tuple(v / 255 for v in rgb)


def plot_history(history: list[dict], *, class_names, class_colors, prior_bias, out_dir) -> list[Path]:
    """Write ``loss.png``, ``dice.png`` and ``bias.png`` into ``out_dir``; returns their paths.

    ``history`` rows are the per-epoch log rows of the trainer (``epoch``, ``train_loss``,
    ``val_loss``, ``dice_<class>``, ``b_<class>``); the prior γ·log(1 − f_c) − mean is drawn as
    dashed lines in the bias plot so the learned shift away from it is visible.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    epochs = [row["epoch"] for row in history]
    paths = []

    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(epochs, [row["train_loss"] for row in history], "o-", label="train")
    ax.plot(epochs, [row.get("val_loss", np.nan) for row in history], "s-", label="validation")
    ax.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax.legend()
    fig.tight_layout()
    paths.append(out_dir / "loss.png")
    fig.savefig(paths[-1])

    fig = _figure()
    ax = fig.add_subplot()
    for name, color in zip(class_names, class_colors):
        ax.plot(epochs, [row.get(f"dice_{name}", np.nan) for row in history], "o-", color=_color(color), label=name)
    ax.plot(epochs, [row.get("val_mdice", np.nan) for row in history], "k--", label="mDice")
    ax.set(xlabel="epoch", ylabel="validation Dice (dataset level)", title="Per-class Dice", ylim=(0, 1))
    ax.legend(fontsize="small")
    fig.tight_layout()
    paths.append(out_dir / "dice.png")
    fig.savefig(paths[-1])

    fig = _figure()
    ax = fig.add_subplot()
    for k, (name, color) in enumerate(zip(class_names, class_colors)):
        c = _color(color)
        ax.plot(epochs, [row.get(f"b_{name}", np.nan) for row in history], "o-", color=c, label=name)
        if prior_bias is not None:
            ax.axhline(float(prior_bias[k]), color=c, linestyle="--", linewidth=1)
    ax.set(xlabel="epoch", ylabel="b_c (attention bias)", title="Bias trajectory (dashed: frequency prior)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    paths.append(out_dir / "bias.png")
    fig.savefig(paths[-1])
    return paths
