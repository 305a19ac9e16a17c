"""Everyday commands: info, doctor, demo, build-assets, estimate, validate-data."""

from __future__ import annotations

import sys

from fmlab.checkpoints.assets import BASE_CONFIG, TOKENIZER, assets_dir
from fmlab.data.dataset import describe, tokenize_dataset
from fmlab.data.tokenizer import Tokenizer
from fmlab.data.validate import DataError, read_messages
from fmlab.errors import FmlabError
from fmlab.lab.demo import OUT, run_notebooks
from fmlab.lab.demo_page import write_demo_page
from fmlab.lab.doctor import FAIL, run_checks, table
from fmlab.lab.environment import environment_report
from fmlab.model.config import from_tamm_json, preset
from fmlab.model.precision import AUTO, PRECISIONS, choose_precision, describe_choice
from fmlab.tiny.build import REPO_ASSETS, Recipe, build_assets
from fmlab.train.memory import GiB, estimate_generation, estimate_training


def add_info(sub):
    p = sub.add_parser("info", help="show versions, device and the assets directory in use")
    p.add_argument("--assets", help="assets directory (default: $FMLAB_ASSETS or the embedded fmlab-tiny)")
    p.set_defaults(func=cmd_info)


def cmd_info(args):
    for key, value in environment_report(args.assets).items():
        print(f"{key:>16}: {value}")


def add_doctor(sub):
    p = sub.add_parser("doctor", help="check Python, packages, devices, disk space and the assets directory")
    p.add_argument("--assets", help="assets directory (default: $FMLAB_ASSETS or the embedded fmlab-tiny)")
    p.add_argument("--checkpoint-dir", default="out", help="where runs will write (for the disk check)")
    p.add_argument("--keep-best", type=int, default=2, help="checkpoints a run keeps (for the disk check)")
    p.add_argument(
        "--against-tamm",
        action="store_true",
        help="also compare the template and fp32 logits with Apple's tamm 0.1.0 (pip install tamm==0.1.0)",
    )
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args):
    checks = run_checks(args.assets, args.checkpoint_dir, args.keep_best, against_tamm=args.against_tamm)
    print(table(checks))
    return 1 if any(c.status == FAIL for c in checks) else 0


def add_demo(sub):
    p = sub.add_parser("demo", help="run the whole pipeline on the embedded default (notebooks, headless)")
    p.add_argument("--smoke", action="store_true", help="tiny settings: finishes in about a minute")
    p.add_argument("--only", nargs="*", help="run only notebooks whose names start with these prefixes")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args):
    timings = run_notebooks(smoke=args.smoke, only=args.only)
    for row in timings:
        print(f"{row['notebook']:>24}: {row['seconds']:7.1f} s")
    print(f"executed notebooks: {OUT / 'notebooks'}\nsummary: {write_demo_page(OUT, timings)}")


def add_build_assets(sub):
    p = sub.add_parser("build-assets", help="rebuild the embedded default fmlab-tiny from its seed")
    p.add_argument("--out", default=None, help="assets directory to write (default: the repo's assets/)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--work",
        default="out/build-assets",
        help="scratch directory: finished stages and resume state (rerun to resume)",
    )
    p.add_argument("--wordnet", default=None, help="WordNet 3.0 folder (default: $WORDNET_DIR or /usr/share/wordnet)")
    p.set_defaults(func=cmd_build_assets)


def cmd_build_assets(args):
    where = {"wordnet_dir": args.wordnet} if args.wordnet else {}
    manifest = build_assets(args.out or REPO_ASSETS, Recipe(seed=args.seed), work=args.work, **where)
    print(
        f"built {manifest['name']} in {manifest['seconds']['total_s']:.0f} s; "
        f"base play_format_score {manifest['base_play_format_score']}"
    )


def add_estimate(sub):
    p = sub.add_parser("estimate", help="predicted peak memory for training and generation")
    p.add_argument("--assets", help="assets directory (default: $FMLAB_ASSETS or the embedded fmlab-tiny)")
    p.add_argument("--preset", help="a model preset instead of the assets' config (e.g. afm-3b)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-sequence-length", type=int, default=4095)
    p.add_argument(
        "--precision", default=AUTO, choices=PRECISIONS, help="default: what training would pick on each device"
    )
    p.add_argument("--activation-checkpointing", action="store_true")
    p.set_defaults(func=cmd_estimate)


def cmd_estimate(args):
    cfg = preset(args.preset) if args.preset else from_tamm_json(assets_dir(args.assets) / BASE_CONFIG)
    print(
        f"model: {cfg.num_layers} layers ({cfg.num_kv_reuse_layers} KV-reuse), hidden {cfg.hidden_dim}, "
        f"vocab {cfg.vocab_size}; batch {args.batch_size} x {args.max_sequence_length}"
        + (", activation checkpointing" if args.activation_checkpointing else "")
    )
    estimates = {}
    for device in ("cpu", "cuda", "mps"):
        estimates[device] = estimate_training(
            cfg, args.batch_size, args.max_sequence_length, args.precision, args.activation_checkpointing, device=device
        )
        gen = estimate_generation(cfg, args.batch_size, args.max_sequence_length, args.precision, device)
        choice = choose_precision(args.precision, device)
        print(
            f"{device:>5}: training {estimates[device].total / GiB:7.2f} GiB   generation {gen.total / GiB:7.2f} GiB"
            f"   {describe_choice(choice)}"
        )
    print(
        "training breakdown (cuda, GiB): "
        + ", ".join(f"{k} {v / GiB:.2f}" for k, v in estimates["cuda"].rows().items())
    )


# --- validate-data (data pipeline) ---------------------------------------------------------------


def add_validate_data(sub):
    p = sub.add_parser("validate-data", help="check every line of chat JSONL files and report their statistics")
    p.add_argument("files", nargs="+", metavar="FILE", help="JSONL files, one conversation per line")
    p.add_argument(
        "--mode",
        choices=["train", "prompt"],
        default="train",
        help="train: samples end with assistant; prompt: with user (default: train)",
    )
    p.add_argument("--max-sequence-length", type=int, help="report samples longer than this many tokens")
    p.add_argument("--assets", help="assets directory whose tokenizer.model gives the token statistics")
    p.set_defaults(func=cmd_validate_data)


def cmd_validate_data(args):
    import warnings

    if args.max_sequence_length is not None and args.max_sequence_length < 1:
        raise FmlabError(f"--max-sequence-length must be at least 1, got {args.max_sequence_length}")
    samples, errors = [], []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for path in args.files:
            try:
                samples += read_messages(path, args.mode)
            except DataError as err:  # keep going: report the problems of every file at once
                errors += err.errors
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    if errors:
        raise DataError(errors)
    try:  # an explicit --assets must exist; the default may not be built yet
        tokenizer_path = assets_dir(args.assets) / TOKENIZER
    except FmlabError:
        if args.assets:
            raise
        tokenizer_path = None
    print(f"files: {', '.join(args.files)} (mode {args.mode}): all lines valid")
    if tokenizer_path is None or not tokenizer_path.is_file():
        print(describe(samples).text())
        print(f"no tokenizer at {tokenizer_path or 'the default assets'}: token statistics skipped")
        return 0
    dataset = tokenize_dataset(Tokenizer.from_file(tokenizer_path), samples, args.max_sequence_length)
    print(dataset.stats.text())
    print(f"tokenizer: {tokenizer_path}")
    return 0
