"""Test metrics (classification: from a confusion matrix; regression: MAE, RMSE, R^2) and
the plots logged with each run."""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from .feed import model_input


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts[true, predicted]."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return cm


def metrics_from_confusion(cm: np.ndarray, labels: Sequence[str]) -> dict:
    """Accuracy, per-class precision/recall/F1, macro F1 (a class never seen nor predicted
    gets 0 for the undefined ratios, as scikit-learn's ``zero_division=0``)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    predicted = cm.sum(axis=0)
    actual = cm.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(actual > 0, tp / actual, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    total = cm.sum()
    out = {"accuracy": float(tp.sum() / total) if total else 0.0,
           "macro_f1": float(f1.mean()), "rows": int(total)}
    for i, label in enumerate(labels):
        out[f"precision_{label}"] = float(precision[i])
        out[f"recall_{label}"] = float(recall[i])
        out[f"f1_{label}"] = float(f1[i])
    return out


def evaluate_model(model, batches: Iterable[tuple[np.ndarray, np.ndarray]],
                   labels: Sequence[str], errors: list | None = None,
                   max_errors: int = 0) -> tuple[dict, np.ndarray]:
    """Stream batches through ``model``; return (metrics, confusion matrix).

    With ``errors`` given, the first ``max_errors`` misclassified inputs (of the model's
    first input: the image) are appended to it as (input, true index, predicted index,
    confidence)."""
    cm = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for x, y in batches:
        probs = np.asarray(model.predict_on_batch(model_input(x)))
        pred = probs.argmax(axis=1)
        cm += confusion_matrix(y, pred, len(labels))
        if errors is not None and len(errors) < max_errors:
            first = next(iter(x.values()))
            for i in np.flatnonzero(pred != y)[:max_errors - len(errors)]:
                errors.append((np.array(first[i]), int(y[i]), int(pred[i]),
                               float(probs[i, pred[i]])))
    return metrics_from_confusion(cm, labels), cm


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict:
    """Mean absolute error, root mean squared error and R^2 (0 for a constant target)."""
    y, pred = np.asarray(y, np.float64), np.asarray(pred, np.float64)
    n = len(y)
    if n == 0:
        return {"mae": 0.0, "rmse": 0.0, "r2": 0.0, "rows": 0}
    error = pred - y
    total = float(np.square(y - y.mean()).sum())
    return {"mae": float(np.abs(error).mean()), "rmse": float(np.sqrt(np.square(error).mean())),
            "r2": float(1 - np.square(error).sum() / total) if total > 0 else 0.0, "rows": n}


def evaluate_regression(model, batches: Iterable[tuple[dict, np.ndarray]],
                        keep: int = 5000) -> tuple[dict, np.ndarray, np.ndarray]:
    """Stream batches through a regression ``model``; return (metrics, the first ``keep``
    true values, their predictions) - the pairs are for the plots."""
    ys, preds = [], []
    for x, y in batches:
        ys.append(np.asarray(y, np.float64))
        preds.append(np.asarray(model.predict_on_batch(model_input(x)), np.float64)
                     .reshape(len(y), -1)[:, 0])
    y = np.concatenate(ys) if ys else np.empty(0)
    pred = np.concatenate(preds) if preds else np.empty(0)
    return regression_metrics(y, pred), y[:keep], pred[:keep]


def log_figure(fig, artifact_file: str) -> None:
    """Log a figure to the active MLflow run and close it: pyplot keeps every open figure,
    which a long-lived driver (a notebook training again and again) would accumulate."""
    import matplotlib.pyplot as plt
    import mlflow
    try:
        mlflow.log_figure(fig, artifact_file)
    finally:
        plt.close(fig)


def plot_misclassified(errors: list, labels: Sequence[str]):
    """A grid of misclassified test images titled "true -> predicted (confidence)"."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = max(len(errors), 1)
    cols = min(5, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (img, true, pred, conf) in zip(axes.flat, errors):
        img = np.asarray(img)
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img,
                  cmap="gray" if img.shape[-1] == 1 else None, vmin=0, vmax=255)
        ax.set_title(f"{labels[true]}\n-> {labels[pred]} ({conf:.2f})", fontsize=8)
    if not errors:
        axes.flat[0].text(0.5, 0.5, "no misclassified test images", ha="center")
    fig.suptitle("Misclassified test images: true -> predicted (confidence)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_confusion(cm: np.ndarray, labels: Sequence[str]):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    im = ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    fig.colorbar(im, ax=ax)
    ax.set_title("Test confusion matrix")
    fig.tight_layout()
    return fig


def plot_predicted_vs_actual(y: np.ndarray, pred: np.ndarray, target: str):
    """Test predictions against the true values, with the line of perfect predictions."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(y, pred, s=8, alpha=0.5)
    lo = float(min(y.min(), pred.min())) if len(y) else 0.0
    hi = float(max(y.max(), pred.max())) if len(y) else 1.0
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=1, label="perfect")
    ax.set_xlabel(f"actual {target}")
    ax.set_ylabel(f"predicted {target}")
    ax.set_title("Test split: predicted vs actual")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_residuals(y: np.ndarray, pred: np.ndarray, target: str):
    """Residuals (predicted - actual) against the predictions: a shapeless band is good."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(pred, pred - y, s=8, alpha=0.5)
    ax.axhline(0, color="black", linewidth=1)
    ax.set_xlabel(f"predicted {target}")
    ax.set_ylabel("residual (predicted - actual)")
    ax.set_title("Test split: residuals")
    fig.tight_layout()
    return fig


def plot_history(history: dict[str, list[float]]):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    metric_name = "accuracy" if "accuracy" in history else "mae"
    for ax, metric in zip(axes, ("loss", metric_name)):
        for prefix in ("", "val_"):
            values = history.get(prefix + metric)
            if values:
                ax.plot(range(1, len(values) + 1), values, marker="o",
                        label="validation" if prefix else "train")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    fig.tight_layout()
    return fig
