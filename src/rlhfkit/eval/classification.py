"""Classification metrics: accuracy, per-class precision/recall/F1, macro-F1, confusion matrix.

Pure functions of the true and predicted class indices (0..K-1), so they are tested against
values worked out by hand. ``report`` gathers them into one JSON-ready dict and ``table``
prints it for a person.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def confusion_matrix(
    true: Sequence[int], predicted: Sequence[int], classes: int
) -> list[list[int]]:
    """``C[i][j]``: how many texts of true class i were predicted as class j (rows sum to each
    class's support, the diagonal holds the correct ones)."""
    matrix = [[0] * classes for _ in range(classes)]
    for t, p in zip(true, predicted, strict=True):
        matrix[t][p] += 1
    return matrix


def per_class(matrix: list[list[int]]) -> list[dict[str, float]]:
    """Each class's precision, recall, F1 and support from a confusion matrix:

        precision_k = C[k][k] / sum_i C[i][k]     recall_k = C[k][k] / sum_j C[k][j]
        F1_k = 2 precision_k recall_k / (precision_k + recall_k)

    A ratio with nothing below it (a class never predicted, or never present) is 0, as
    scikit-learn's ``zero_division=0``.
    """
    rows = []
    for k, row in enumerate(matrix):
        predicted = sum(other[k] for other in matrix)
        support = sum(row)
        precision = row[k] / predicted if predicted else 0.0
        recall = row[k] / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"precision": precision, "recall": recall, "f1": f1, "support": support})
    return rows


def macro_f1(classes: list[dict[str, float]]) -> float:
    """The unweighted mean of the per-class F1 over classes present in the data (support > 0):
    every class counts the same, however rare, so it exposes a model that ignores small ones."""
    present = [c["f1"] for c in classes if c["support"]]
    return sum(present) / len(present) if present else 0.0


def report(true: Sequence[int], predicted: Sequence[int], names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, each class's precision/recall/F1/support and the confusion matrix
    (rows: true class, columns: predicted, in the order of ``names``)."""
    matrix = confusion_matrix(true, predicted, len(names))
    classes = per_class(matrix)
    correct = sum(matrix[k][k] for k in range(len(names)))
    return {
        "accuracy": correct / len(true) if len(true) else 0.0,
        "macro_f1": macro_f1(classes),
        "texts": len(true),
        "classes": {name: c for name, c in zip(names, classes, strict=True)},
        "confusion": {"labels": list(names), "matrix": matrix},
    }


def table(result: dict[str, Any]) -> str:
    """A classification report as text: one row per class, then accuracy and macro-F1, then
    the confusion matrix with classes numbered as in the rows above."""
    names = list(result["classes"])
    width = max(len(name) for name in [*names, "macro-F1"])
    lines = [f"{'class':<{width}}  precision  recall     f1  support"]
    for number, name in enumerate(names):
        c = result["classes"][name]
        lines.append(
            f"{name:<{width}}  {c['precision']:9.3f}  {c['recall']:6.3f}  {c['f1']:5.3f}"
            f"  {int(c['support']):7d}   [{number}]"
        )
    lines.append(f"{'accuracy':<{width}}  {result['accuracy']:.3f} of {result['texts']} texts")
    lines.append(f"{'macro-F1':<{width}}  {result['macro_f1']:.3f}")
    matrix = result["confusion"]["matrix"]
    cell = max(4, *(len(str(v)) + 1 for row in matrix for v in row))
    lines.append("confusion (rows: true class, columns: predicted)")
    lines.append(" " * 5 + "".join(f"{f'[{j}]':>{cell}}" for j in range(len(names))))
    for i, row in enumerate(matrix):
        lines.append(f"{f'[{i}]':>5}" + "".join(f"{v:>{cell}}" for v in row))
    return "\n".join(lines)
