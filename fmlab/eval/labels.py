"""Per-label precision, recall and F1, and the confusion matrix, of a labelled task.

The labels are the distinct references; a reply's predicted label is `fmlab.eval.metrics.predicted_label`
(the label it names, else `(other)`). Rows of the confusion matrix are the reference labels, columns the
predicted ones, `(other)` last. Precision = TP / predicted as the label, recall = TP / labelled so,
F1 their harmonic mean (0 where undefined: nothing predicted or nothing labelled).
"""

from __future__ import annotations

from fmlab.eval.metrics import OTHER, predicted_label


def confusion_matrix(replies, references, labels=None):
    """DataFrame: counts of (reference label, predicted label)."""
    import pandas as pd

    labels = sorted(set(references)) if labels is None else list(labels)
    columns = [*labels, OTHER]
    counts = pd.DataFrame(0, index=pd.Index(labels, name="reference"), columns=pd.Index(columns, name="predicted"))
    for reply, reference in zip(replies, references):
        counts.loc[predicted_label(reference, labels), predicted_label(reply, labels)] += 1
    return counts


def label_report(confusion):
    """DataFrame, one row per label and a macro average: precision, recall, f1, support."""
    import pandas as pd

    rows = {}
    for label in confusion.index:
        tp = int(confusion.loc[label, label])
        predicted, actual = int(confusion[label].sum()), int(confusion.loc[label].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows[label] = {"precision": precision, "recall": recall, "f1": f1, "support": actual}
    table = pd.DataFrame.from_dict(rows, orient="index")
    macro = table[["precision", "recall", "f1"]].mean()
    table.loc["macro avg"] = [*macro, int(table["support"].sum())]
    table["support"] = table["support"].astype(int)
    table.index.name = "label"
    return table
