"""eval: the base and adapter checkpoints on held-out samples, scored with task metrics (docs/eval.md)."""

from __future__ import annotations

import math
import sys

from fmlab.errors import FmlabError
from fmlab.eval.harness import THRESHOLD, evaluate
from fmlab.eval.registry import NAMES
from fmlab.eval.runner import DEFAULT_OOD
from fmlab.eval.stats import RESAMPLES
from fmlab.infer.sampling import Sampling
from fmlab.model.precision import AUTO, PRECISIONS, choose_precision, describe_choice, resolve_device


def add_eval(sub):
    p = sub.add_parser(
        "eval",
        help="score the base and adapter checkpoints on held-out samples: task metrics, 95%% intervals, "
        "paired tests against the base, regressions, an out-of-domain check",
    )
    p.add_argument("--config", help="JSON or YAML file of flag values (keys as flag names); flags win")
    p.add_argument(
        "--data",
        "--test-data",
        "--eval-data",
        dest="data",
        required=True,
        help="chat JSONL of held-out samples; each sample's last assistant turn is the reference",
    )
    p.add_argument(
        "-c",
        "--checkpoint",
        "--checkpoints",
        dest="checkpoints",
        nargs="+",
        action="extend",
        default=[],
        metavar="RUN_DIR_OR_FILE",
        help="adapter checkpoint files and run directories (a run: all its kept checkpoints and its final "
        "one); the base is always scored too",
    )
    p.add_argument(
        "--metric",
        "--metrics",
        dest="metrics",
        action="append",
        help=f"metric name(s), comma-separated or repeated: {', '.join(NAMES)}, regex:PATTERN, "
        "module:function or file.py:function (your own fn(prompt, reply, reference) -> 0..1); "
        "default auto: picked from the references",
    )
    p.add_argument(
        "--ood",
        nargs="?",
        const=DEFAULT_OOD,
        metavar="FILE",
        help="also score an out-of-domain chat JSONL and report each checkpoint's drop from the base; "
        "--ood alone: fmlab-tiny's general-skills probes",
    )
    p.add_argument(
        "--baseline-train",
        metavar="FILE",
        help="a labelled task's training JSONL: also score a bag-of-words classifier (TF-IDF + logistic "
        "regression) fitted on it, the floor an adapter should clear",
    )
    p.add_argument("--ood-metric", dest="ood_metrics", action="append", help="metric(s) for --ood (default auto)")
    p.add_argument("-o", "--out", default="eval", help="folder for eval.json and report.html (default: ./eval)")
    p.add_argument("--limit", type=int, help="only the first N samples (of --data and of --ood)")
    p.add_argument("-bs", "--batch-size", type=int, default=8, help="prompts decoded together (left-padded)")
    p.add_argument(
        "-m", "--max-new-tokens", type=int, help="default: the longest reference's length + 25%% (+ 8 tokens)"
    )
    p.add_argument("-t", "--temperature", type=float, default=0.0, help="default 0: greedy")
    p.add_argument("--top-k", type=int, default=50, help="0 turns top-k off")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="sampling seed (every model gets it) and bootstrap seed")
    p.add_argument("--threshold", type=float, default=THRESHOLD, help="a sample passes when its score is at least this")
    p.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap resamples for the 95%% intervals")
    p.add_argument(
        "--draft-checkpoint",
        help="decode speculatively with a draft: 'default' (the assets' draft-model.pt), a draft checkpoint "
        "file or a draft run directory; greedy replies are the same, only faster when the draft fits",
    )
    p.add_argument("--num-draft-tokens", type=int, default=5)
    p.add_argument("--precision", default=AUTO, choices=PRECISIONS)
    p.add_argument("--assets", help="assets directory (default: $FMLAB_ASSETS or the embedded fmlab-tiny)")
    p.add_argument("--device", help="cpu, cuda, mps (default: the best available)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)


def _check(args):
    problems = [
        f"{flag} must be {rule}, got {value}"
        for flag, value, ok, rule in (
            ("--batch-size", args.batch_size, args.batch_size >= 1, "at least 1"),
            (
                "--max-new-tokens",
                args.max_new_tokens,
                args.max_new_tokens is None or args.max_new_tokens >= 1,
                "at least 1",
            ),
            ("--temperature", args.temperature, args.temperature >= 0, "0 or more"),
            ("--top-p", args.top_p, 0 < args.top_p <= 1, "in (0, 1]"),
            ("--resamples", args.resamples, args.resamples >= 100, "at least 100"),
            ("--num-draft-tokens", args.num_draft_tokens, args.num_draft_tokens >= 1, "at least 1"),
        )
        if not ok
    ]
    if problems:
        raise FmlabError("; ".join(problems))


def _fmt(value, spec: str = ".3f") -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def print_summary(result, out=None):
    """The summary as aligned text: per split and metric, one line per model."""
    out = out or sys.stdout
    for (split, metric), g in result.summary.groupby(["split", "metric"], sort=False):
        print(f"\n{split} · {metric} (n = {g['n'].iloc[0]})", file=out)
        head = f"  {'model':<28} {'mean':>6}  {'95% CI':<16} {'pass':>5}  {'Δ base':>7}  {'Δ 95% CI':<18} {'+':>4} {'-':>4}  p"
        print(head, file=out)
        for r in g.itertuples():
            ci = f"[{r.ci_low:.3f}, {r.ci_high:.3f}]"
            dci = "" if math.isnan(r.diff) else f"[{r.diff_low:+.3f}, {r.diff_high:+.3f}]"
            counts = "" if math.isnan(r.diff) else f"{int(r.improved):>4} {int(r.regressed):>4}"
            print(
                f"  {r.model:<28} {r.mean:>6.3f}  {ci:<16} {r.pass_rate:>5.3f}  {_fmt(r.diff, '+.3f'):>7}  "
                f"{dci:<18} {counts:>9}  {_fmt(r.p_value, '.3g')}",
                file=out,
            )
    if result.info["ood"]:
        print("\nout of domain: drop from the base (positive = the checkpoint forgot)", file=out)
        for r in result.ood.itertuples():
            print(
                f"  {r.model:<28} {r.metric:<12} base {r.base_mean:.3f} → {r.mean:.3f}: drop {r.drop:+.3f} "
                f"[{r.drop_low:+.3f}, {r.drop_high:+.3f}], {int(r.regressed)} regressed, p {r.p_value:.3g}",
                file=out,
            )
    regressed = result.flips[result.flips["flip"] == "regressed"]
    if len(regressed):
        print(f"\n{len(regressed)} regression(s) against the base (all flips in the report):", file=out)
        for r in regressed.head(5).itertuples():
            print(f"  {r.model} · {r.metric} · {r.where}: {r.base_text[:60]!r} → {r.text[:60]!r}", file=out)


def cmd_eval(args):
    _check(args)
    device = resolve_device(args.device)
    choice = choose_precision(args.precision, device, decoding=True)
    if not args.quiet:
        print(describe_choice(choice), file=sys.stderr)
    result = evaluate(
        args.checkpoints,
        args.data,
        args.metrics or "auto",
        ood=args.ood,
        ood_metrics=args.ood_metrics or "auto",
        assets=args.assets,
        draft=args.draft_checkpoint,
        num_draft_tokens=args.num_draft_tokens,
        limit=args.limit,
        max_new_tokens=args.max_new_tokens,
        sampling=Sampling(args.temperature, args.top_k or None, args.top_p, args.seed),
        batch_size=args.batch_size,
        precision=choice.precision,
        threshold=args.threshold,
        resamples=args.resamples,
        seed=args.seed,
        device=device,
        progress=not args.quiet,
        baseline_train=args.baseline_train,
    )
    print_summary(result)
    paths = result.write(args.out)
    timing = result.info["timing"]
    print(
        f"\nloaded the base once in {timing['load_s']:.1f} s; {len(result.info['models'])} models in "
        f"{timing['total_s']:.1f} s. Wrote {paths['json']} and {paths['html']}"
    )
    return 0
