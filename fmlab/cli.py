"""`fmlab <command>`: the terminal interface, with the Apple toolkit's flag names where it has them.

Each command is a `cmd_<name>(args)` function plus an `add_<name>(subparsers)` that declares its flags.
User errors (FmlabError) print one clear line and exit 1; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import sys

from .common import FmlabError


def add_info(sub):
    p = sub.add_parser("info", help="show versions, device and the assets directory in use")
    p.add_argument("--assets", help="assets directory (default: $FMLAB_ASSETS or the embedded fmlab-tiny)")
    p.set_defaults(func=cmd_info)


def cmd_info(args):
    from .report import environment_report

    for key, value in environment_report(args.assets).items():
        print(f"{key:>16}: {value}")


def add_demo(sub):
    p = sub.add_parser("demo", help="run the whole pipeline on the embedded default (notebooks, headless)")
    p.add_argument("--out", default="out", help="output directory (default: out/)")
    p.add_argument("--smoke", action="store_true", help="tiny settings: finishes in about a minute")
    p.add_argument("--only", nargs="*", help="run only notebooks whose names start with these prefixes")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args):
    from .demo import run_notebooks

    for row in run_notebooks(args.out, smoke=args.smoke, only=args.only):
        print(f"{row['notebook']:>24}: {row['seconds']:7.1f} s")
    print(f"executed notebooks are in {args.out}/notebooks/")


# --- validate-data (data pipeline) ---------------------------------------------------------------


def add_validate_data(sub):
    p = sub.add_parser("validate-data", help="check every line of chat JSONL files and report their statistics")
    p.add_argument("files", nargs="+", metavar="FILE", help="JSONL files, one conversation per line")
    p.add_argument("--mode", choices=["train", "prompt"], default="train",
                   help="train: samples end with assistant; prompt: with user (default: train)")
    p.add_argument("--max-sequence-length", type=int, help="report samples longer than this many tokens")
    p.add_argument("--assets", help="assets directory whose tokenizer.model gives the token statistics")
    p.set_defaults(func=cmd_validate_data)


def cmd_validate_data(args):
    import warnings

    from .common import assets_dir
    from .data import DataError, describe, read_messages, tokenize_dataset
    from .tokenizer import Tokenizer

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
        tokenizer_path = assets_dir(args.assets) / "tokenizer.model"
    except FmlabError:
        if args.assets:
            raise
        tokenizer_path = None
    print(f"files: {', '.join(args.files)} (mode {args.mode}): all lines valid")
    if tokenizer_path is None or not tokenizer_path.is_file():
        print(describe(samples).summary())
        print(f"no tokenizer at {tokenizer_path or 'the default assets'}: token statistics skipped")
        return 0
    dataset = tokenize_dataset(Tokenizer.from_file(tokenizer_path), samples, args.max_sequence_length)
    print(dataset.report.summary())
    print(f"tokenizer: {tokenizer_path}")
    return 0


# --- training (adapters and drafts share the loop and most flags) -----------------------------------


def _training_flags(p, draft: bool = False):
    """Apple's training flags (train_adapter.py / train_draft_model.py) plus fmlab's own."""
    p.add_argument("--config", help="JSON or YAML file of flag values (keys as flag names); flags win")
    p.add_argument("--assets", help="assets directory (default: $FMLAB_ASSETS or the embedded fmlab-tiny)")
    p.add_argument("--train-data", required=True, help="chat JSONL for training")
    p.add_argument("--eval-data", help="chat JSONL for evaluation (else checkpoints rank by train loss)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("-lr", "--learning-rate", type=float, default=1e-3)
    p.add_argument("--warmup-epochs", type=float, default=None,
                   help="linear warmup length in epochs (Apple's flag); default: --warmup-fraction")
    p.add_argument("--warmup-fraction", type=float, default=0.1, help="warmup as a fraction of all steps")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--gradient-accumulation-steps", type=int, default=1)
    p.add_argument("--activation-checkpointing", action="store_true")
    if draft:
        p.add_argument("--target-precision", default="bf16-mixed", choices=PRECISIONS)
        p.add_argument("--draft-precision", default="bf16-mixed", choices=PRECISIONS)
        p.add_argument("--compile-target-model", action="store_true")
        p.add_argument("--compile-draft-model", action="store_true")
    else:
        p.add_argument("--precision", default="bf16-mixed", choices=PRECISIONS)
        p.add_argument("--compile-model", action="store_true", help="torch.compile the model (CPU and CUDA)")
    p.add_argument("--weight-decay", type=float, default=1e-2)
    p.add_argument("--clip-grad-norm", type=float, default=1.0)
    p.add_argument("--max-sequence-length", type=int, default=None)
    p.add_argument("--fixed-sized-sequences", action="store_true")
    p.add_argument("--pack-sequences", action="store_true")
    p.add_argument("--loss-update-frequency", type=int, default=3, help="progress-bar refresh, in steps")
    p.add_argument("--checkpoint-dir", required=True)
    p.add_argument("--checkpoint-frequency", type=int, default=1, help="save a candidate every N epochs")
    p.add_argument("--keep-best", type=int, default=2, help="checkpoints kept, best by eval loss")
    p.add_argument("--eval-every", type=int, default=None, help="also evaluate every N optimizer steps")
    p.add_argument("--save-every", type=int, default=None, help="write the resume state every N steps")
    p.add_argument("--resume", action="store_true", help="continue from CHECKPOINT_DIR/last.pt exactly")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu, cuda, mps (default: the best available)")


PRECISIONS = ("f32", "bf16-mixed", "bf16", "f16-mixed")


def _apply_config_file(parser, argv):
    """Flags given in --config become the parser's defaults, so explicit flags still win."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if not known.config:
        return
    import json
    from pathlib import Path

    path = Path(known.config)
    try:
        text = path.read_text()
        values = json.loads(text) if path.suffix == ".json" else __import__("yaml").safe_load(text)
    except Exception as err:
        raise FmlabError(f"{path}: cannot read config file ({err})") from None
    if not isinstance(values, dict):
        raise FmlabError(f"{path}: a config file must be a mapping of flag names to values")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command = next((c for c in argv if c in sub.choices), None)
    if command is None:
        return
    dests = {a.dest for a in sub.choices[command]._actions}
    values = {k.lstrip("-").replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - dests)
    if unknown:
        raise FmlabError(f"{path}: unknown option(s) {', '.join(unknown)} for fmlab {command}")
    for action in sub.choices[command]._actions:
        if action.dest in values:
            action.required = False
    sub.choices[command].set_defaults(**values)


def _train_config(args, prefix: str, precision: str, compile_model: bool, schedule: str, every_n: int):
    from .train import TrainConfig

    return TrainConfig(
        epochs=args.epochs, learning_rate=args.learning_rate, warmup_epochs=args.warmup_epochs,
        warmup_fraction=args.warmup_fraction, schedule=schedule, batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps, weight_decay=args.weight_decay,
        clip_grad_norm=args.clip_grad_norm, precision=precision,
        activation_checkpointing=args.activation_checkpointing, checkpoint_every_n=every_n,
        compile_model=compile_model, eval_every=args.eval_every, checkpoint_frequency=args.checkpoint_frequency,
        keep_best=args.keep_best, prefix=prefix, loss_update_frequency=args.loss_update_frequency, seed=args.seed)


def _data_config(args):
    from .adapter import DataConfig

    return DataConfig(args.max_sequence_length, args.pack_sequences, args.fixed_sized_sequences)


def add_train_adapter(sub):
    p = sub.add_parser("train-adapter", help="train a LoRA adapter on the base (Apple: examples.train_adapter)")
    _training_flags(p)
    p.add_argument("--lora-rank", type=int, default=None, help="default: the base config's (Apple: 32)")
    p.add_argument("--lora-alpha", type=float, default=None, help="default: the base config's (Apple: 16)")
    p.add_argument("--plot", help="write the loss curve PNG here (default: CHECKPOINT_DIR/loss.png)")
    p.set_defaults(func=cmd_train_adapter)


def cmd_train_adapter(args):
    from .adapter import train_adapter
    from .config import LoRAConfig

    lora = None
    if args.lora_rank or args.lora_alpha:
        from .assets import BASE_CONFIG
        from .common import assets_dir
        from .config import from_tamm_json

        base = from_tamm_json(assets_dir(args.assets) / BASE_CONFIG).lora or LoRAConfig()
        lora = LoRAConfig(rank=args.lora_rank or base.rank, alpha=args.lora_alpha or base.alpha)
    config = _train_config(args, "adapter", args.precision, args.compile_model, "cosine", 2)
    summary = train_adapter(args.train_data, args.checkpoint_dir, args.eval_data, config, _data_config(args),
                            args.assets, lora, args.device, callbacks=_plot_callbacks(args), resume=args.resume,
                            save_every=args.save_every)
    _print_summary(summary)


def _plot_callbacks(args):
    try:
        from .widgets import LiveLossPlot
    except ImportError:
        return []
    from pathlib import Path

    return [LiveLossPlot(path=getattr(args, "plot", None) or Path(args.checkpoint_dir) / "loss.png", live=False)]


def _print_summary(summary):
    manifest = summary["manifest"]
    print(f"done: {summary['steps']} steps, final train loss {summary['loss']:.4f}"
          + (f", eval loss {summary['eval_loss']:.4f}" if summary["eval_loss"] is not None else ""))
    for c in manifest["checkpoints"]:
        print(f"  kept {c['path']}  (metric {c['metric']:.4f})")
    if manifest["final"]:
        print(f"  final {manifest['final']['path']}")
    print(f"  metrics: {summary['out_dir']}/metrics.jsonl, manifest: {summary['out_dir']}/checkpoints.json")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fmlab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, add in sorted(globals().items()):
        if name.startswith("add_") and callable(add):
            add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    try:
        _apply_config_file(parser, argv)
    except FmlabError as err:
        print(f"fmlab: error: {err}", file=sys.stderr)
        return 1
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except FmlabError as err:
        print(f"fmlab {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
