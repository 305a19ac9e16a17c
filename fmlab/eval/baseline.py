"""A bag-of-words baseline for a labelled task, scored beside the checkpoints by `fmlab eval --baseline-train`.

A TF-IDF of the prompt's words (every system and user turn) and a multinomial logistic regression,
both from scikit-learn, fitted on a training file's (prompt, answer) pairs. It says what the words of a
prompt alone predict: an adapter that does not beat it has learnt little more than which words go with
which answer, and a task where it already scores high is not much of a test of the base. Its reply to
each held-out prompt is the answer it predicts, so every metric, interval and paired test of
`fmlab eval` applies to it unchanged; it answers the task split only (a label says nothing about
out-of-domain prompts).

scikit-learn is already installed for coremltools' palettisation; a TF-IDF + logistic regression is the
standard text-classification baseline, and a reader can reproduce it in three lines.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from fmlab.data.validate import read_messages
from fmlab.errors import FmlabError
from fmlab.eval.tool_calls import reference_text

BASELINE = "bag-of-words"
MAX_ANSWERS = 100  # distinct answers: more than this and the file is not a labelled task
REGULARISATION = 10.0  # logistic regression's C; data/wordnet_* without the label lists: 0.60 at 1, 0.66 at 10 and 100


def prompt_words(messages: list[dict]) -> str:
    """The text the classifier reads: every system and user turn before the answer."""
    return "\n".join(m.get("content") or "" for m in messages if m.get("role") in ("system", "user"))


def labelled_pairs(path: str | Path) -> tuple[list[str], list[str]]:
    """(prompt texts, answers) of a chat JSONL whose last assistant turn is a label; a clear error when
    the answers are not labels (too many distinct ones, or each answer once)."""
    samples = read_messages(path, mode="train")
    texts = [prompt_words(s.messages[:-1]) for s in samples]
    answers = [reference_text(s.messages[-1]) for s in samples]
    counts = Counter(answers)
    if len(counts) < 2 or len(counts) > MAX_ANSWERS or len(counts) > len(answers) / 2:
        raise FmlabError(
            f"{path}: --baseline-train needs a labelled task (a few answers, each repeated); its "
            f"{len(answers)} samples have {len(counts)} distinct answers"
        )
    return texts, answers


class BagOfWords:
    """TF-IDF + logistic regression fitted on a training file's prompts and answers."""

    def __init__(self, train: str | Path):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        start = time.perf_counter()
        self.source = str(train)
        texts, answers = labelled_pairs(train)
        self.vectorizer = TfidfVectorizer(sublinear_tf=True)
        features = self.vectorizer.fit_transform(texts)
        self.classifier = LogisticRegression(C=REGULARISATION, max_iter=5000).fit(features, answers)
        self.samples, self.labels = len(answers), len(set(answers))
        self.fit_s = time.perf_counter() - start

    def predict(self, prompts: list[list[dict]]) -> list[str]:
        return list(self.classifier.predict(self.vectorizer.transform([prompt_words(p) for p in prompts])))

    def info(self) -> dict:
        return {
            "baseline": "TF-IDF + logistic regression (scikit-learn)",
            "train": self.source,
            "train_samples": self.samples,
            "answers": self.labels,
            "C": REGULARISATION,
        }
