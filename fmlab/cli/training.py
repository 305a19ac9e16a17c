"""train-adapter and train-draft: Apple's training flags over one training loop."""

from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace

from fmlab.checkpoints.assets import BASE_CONFIG, RECOMMENDABLE, assets_dir, recommended
from fmlab.data.schema import load_response_format
from fmlab.data.validate import read_messages
from fmlab.lab.loss_plot import LiveLossPlot
from fmlab.model.config import LoRAConfig, from_tamm_json
from fmlab.model.precision import PRECISIONS
from fmlab.train.adapter import DataConfig, train_adapter
from fmlab.train.draft import train_draft
from fmlab.train.loop import TrainConfig
from fmlab.train.losses import DIVERGENCES

# --- training (adapters and drafts share the loop and most flags) -----------------------------------

TRAIN = TrainConfig()  # the flags' defaults are the library's, declared once there
DRAFT = SimpleNamespace(  # train-draft's own flags: train_draft's keyword defaults
    **{n: p.default for n, p in inspect.signature(train_draft).parameters.items() if p.default is not p.empty}
)


def _training_flags(p, draft: bool = False):
    """Apple's training flags (train_adapter.py / train_draft_model.py) plus fmlab's own."""
    p.add_argument("--config", help="JSON or YAML file of flag values (keys as flag names); flags win")
    p.add_argument("--assets", help="assets directory (default: $FMLAB_ASSETS or the embedded fmlab-tiny)")
    p.add_argument("--train-data", required=True, help="chat JSONL for training")
    p.add_argument("--eval-data", help="chat JSONL for evaluation (else checkpoints rank by train loss)")
    p.add_argument("--epochs", type=int, default=None, help=f"default: the assets' recommendation, else {TRAIN.epochs}")
    p.add_argument(
        "-lr",
        "--learning-rate",
        type=float,
        default=None,
        help=f"default: the assets' recommendation, else Apple's {TRAIN.learning_rate}",
    )
    p.add_argument(
        "--warmup-epochs",
        type=float,
        default=None,
        help="linear warmup length in epochs (Apple's flag); default: --warmup-fraction",
    )
    p.add_argument(
        "--warmup-fraction",
        type=float,
        default=None,
        help=f"warmup as a fraction of all steps (else {TRAIN.warmup_fraction})",
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help=f"default: the assets' recommendation, else {TRAIN.batch_size}"
    )
    p.add_argument("--gradient-accumulation-steps", type=int, default=TRAIN.gradient_accumulation_steps)
    p.add_argument("--activation-checkpointing", action="store_true")
    if draft:
        p.add_argument("--target-precision", default=TRAIN.precision, choices=PRECISIONS)
        p.add_argument("--draft-precision", default=TRAIN.precision, choices=PRECISIONS)
        p.add_argument("--compile-target-model", action="store_true")
        p.add_argument("--compile-draft-model", action="store_true")
    else:
        p.add_argument("--precision", default=TRAIN.precision, choices=PRECISIONS)
        p.add_argument("--compile-model", action="store_true", help="torch.compile the model (CPU and CUDA)")
    p.add_argument("--weight-decay", type=float, default=TRAIN.weight_decay)
    p.add_argument("--clip-grad-norm", type=float, default=TRAIN.clip_grad_norm)
    p.add_argument(
        "--max-sequence-length",
        type=int,
        default=None,
        help="default: the assets' recommendation; with --pack-sequences, else the base's context length",
    )
    p.add_argument("--fixed-sized-sequences", action="store_true")
    p.add_argument("--pack-sequences", action="store_true")
    p.add_argument(
        "--group-by-length",
        action="store_true",
        help="unpacked batches of rows of similar length: less padding, faster epochs (not in Apple's toolkit)",
    )
    p.add_argument(
        "--loss-update-frequency", type=int, default=TRAIN.loss_update_frequency, help="progress-bar refresh, in steps"
    )
    p.add_argument("--checkpoint-dir", required=True)
    p.add_argument(
        "--checkpoint-frequency", type=int, default=TRAIN.checkpoint_frequency, help="save a candidate every N epochs"
    )
    p.add_argument("--keep-best", type=int, default=TRAIN.keep_best, help="checkpoints kept, best by eval loss")
    p.add_argument("--eval-every", type=int, default=None, help="also evaluate every N optimizer steps")
    p.add_argument("--save-every", type=int, default=None, help="write the resume state every N steps")
    p.add_argument("--resume", action="store_true", help="continue from CHECKPOINT_DIR/last.pt exactly")
    p.add_argument("--seed", type=int, default=TRAIN.seed)
    p.add_argument("--device", help="cpu, cuda, mps (default: the best available)")
    p.add_argument(
        "--report-to",
        default=",".join(TRAIN.report_to),
        help="also log to tensorboard (CHECKPOINT_DIR/tensorboard) and/or mlflow (its own MLFLOW_TRACKING_URI), "
        "comma-separated; each needs its package",
    )


def _fill_defaults(args, command: str) -> None:
    """Each training setting left unset: the assets' recommendation (fmlab-tiny's manifest), else the
    library default (Apple's values); `--pack-sequences` alone packs to the base's context length.
    Says which values came from the assets; `args.settings_from` records every setting's source."""
    assets = recommended(args.assets, command)
    library = {k: getattr(TRAIN, k, None) for k in RECOMMENDABLE}
    sources = {}
    for key in RECOMMENDABLE:
        if getattr(args, key) is not None:
            sources[key] = "given"
        elif key in assets:
            setattr(args, key, assets[key])
            sources[key] = "assets"
        else:
            setattr(args, key, library[key])
            sources[key] = "default"
    if args.max_sequence_length is None and (args.pack_sequences or args.fixed_sized_sequences):
        args.max_sequence_length = from_tamm_json(assets_dir(args.assets) / BASE_CONFIG).context_length
        sources["max_sequence_length"] = "base context length"
    used = [f"{k.replace('_', '-')} {getattr(args, k)}" for k, v in sources.items() if v == "assets"]
    if used:
        print(f"using the assets' recommended {', '.join(used)} (a flag overrides)")
    args.settings_from = sources


def _train_config(args, prefix: str, precision: str, compile_model: bool, schedule: str, every_n: int):
    return TrainConfig(
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        warmup_epochs=args.warmup_epochs,
        warmup_fraction=args.warmup_fraction,
        schedule=schedule,
        batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        weight_decay=args.weight_decay,
        clip_grad_norm=args.clip_grad_norm,
        precision=precision,
        activation_checkpointing=args.activation_checkpointing,
        checkpoint_every_n=every_n,
        compile_model=compile_model,
        eval_every=args.eval_every,
        checkpoint_frequency=args.checkpoint_frequency,
        keep_best=args.keep_best,
        prefix=prefix,
        loss_update_frequency=args.loss_update_frequency,
        seed=args.seed,
        report_to=args.report_to,
        settings_from=args.settings_from,
    )


def _data_config(args):
    return DataConfig(
        max_sequence_length=args.max_sequence_length,
        pack_sequences=args.pack_sequences,
        fixed_sized_sequences=args.fixed_sized_sequences,
        group_by_length=args.group_by_length,
        response_format=load_response_format(args.response_schema) if getattr(args, "response_schema", None) else None,
    )


def add_train_adapter(sub):
    p = sub.add_parser("train-adapter", help="train a LoRA adapter on the base (Apple: examples.train_adapter)")
    _training_flags(p)
    p.add_argument("--lora-rank", type=int, default=None, help="default: the base config's (Apple: 32)")
    p.add_argument("--lora-alpha", type=float, default=None, help="default: the base config's (Apple: 16)")
    p.add_argument("--plot", help="write the loss curve PNG here (default: CHECKPOINT_DIR/loss.png)")
    p.add_argument(
        "--response-schema",
        metavar="FILE",
        help="JSON schema (or response_format) added to every sample that has none, as the toolkit's SchemaAugmenter",
    )
    p.set_defaults(func=cmd_train_adapter)


def cmd_train_adapter(args):
    _fill_defaults(args, "train_adapter")
    lora = None
    if args.lora_rank or args.lora_alpha:
        base = from_tamm_json(assets_dir(args.assets) / BASE_CONFIG).lora or LoRAConfig()
        lora = LoRAConfig(rank=args.lora_rank or base.rank, alpha=args.lora_alpha or base.alpha)
    config = _train_config(args, "adapter", args.precision, args.compile_model, "cosine", 2)
    summary = train_adapter(
        args.train_data,
        args.checkpoint_dir,
        args.eval_data,
        config=config,
        data=_data_config(args),
        assets=args.assets,
        lora=lora,
        device=args.device,
        callbacks=_plot_callbacks(args),
        resume=args.resume,
        save_every=args.save_every,
    )
    _print_summary(summary)


def add_train_draft(sub):
    p = sub.add_parser(
        "train-draft", help="distil the draft model against base + adapter (Apple: examples.train_draft_model)"
    )
    p.add_argument(
        "--checkpoint",
        help="teacher adapter: a file, or an adapter run directory (its best "
        "checkpoint by eval loss); default: the base alone",
    )
    _training_flags(p, draft=True)
    p.add_argument("--divergence", default=DRAFT.divergence, choices=tuple(DIVERGENCES))
    p.add_argument("--distill-temperature", type=float, default=DRAFT.temperature)
    p.add_argument("--jsd-beta", type=float, default=DRAFT.beta)
    p.add_argument(
        "--on-policy",
        type=float,
        default=DRAFT.on_policy,
        help="fraction of batches scored on the draft's own continuations (GKD)",
    )
    p.add_argument(
        "--teacher-replies",
        action="store_true",
        help="distil on the teacher's own greedy replies "
        "to the training prompts (sequence-level KD) instead of the reference replies",
    )
    p.add_argument(
        "--cache-teacher-topk",
        type=int,
        default=DRAFT.cache_teacher_topk,
        metavar="K",
        help="keep the teacher's top-K log-probabilities per document (in memory and in "
        "CHECKPOINT_DIR/teacher-topk.pt), so later epochs skip the teacher: 6K + 2 bytes per "
        "target token; the divergence is then taken over those K tokens + the rest",
    )
    p.add_argument(
        "--score-prompts",
        help="chat JSONL of held-out prompts: score every saved draft by acceptance and speedup (default: --eval-data)",
    )
    p.add_argument("--num-score-prompts", type=int, default=8)
    p.add_argument("--num-draft-tokens", type=int, default=DRAFT.num_draft_tokens)
    p.add_argument("--plot", help="write the loss curve PNG here (default: CHECKPOINT_DIR/loss.png)")
    p.set_defaults(func=cmd_train_draft, warmup_fraction=0.1)


def cmd_train_draft(args):
    _fill_defaults(args, "train_draft")
    config = _train_config(args, "draft-model", args.draft_precision, args.compile_draft_model, "constant", 1)
    prompts = None
    source = args.score_prompts or args.eval_data
    if source:
        prompts = [s.prompt for s in read_messages(source, mode="train" if not args.score_prompts else "prompt")]
        prompts = prompts[: args.num_score_prompts]
    summary = train_draft(
        args.train_data,
        args.checkpoint_dir,
        args.eval_data,
        checkpoint=args.checkpoint,
        config=config,
        data=_data_config(args),
        assets=args.assets,
        divergence=args.divergence,
        temperature=args.distill_temperature,
        beta=args.jsd_beta,
        on_policy=args.on_policy,
        target_precision=args.target_precision,
        compile_target=args.compile_target_model,
        score_prompts=prompts,
        num_draft_tokens=args.num_draft_tokens,
        device=args.device,
        callbacks=_plot_callbacks(args),
        resume=args.resume,
        teacher_replies=args.teacher_replies,
        cache_teacher_topk=args.cache_teacher_topk,
    )
    _print_summary(summary)
    for row in summary.get("scores", []):
        print(f"  {row['draft']:>24}: acceptance {row['acceptance_rate']:.3f}, speedup {row['speedup']:.2f}x")


def _plot_callbacks(args):
    return [LiveLossPlot(path=getattr(args, "plot", None) or Path(args.checkpoint_dir) / "loss.png", live=False)]


def _print_summary(summary):
    manifest = summary["manifest"]
    print(
        f"done: {summary['steps']} steps, final train loss {summary['loss']:.4f}"
        + (f", eval loss {summary['eval_loss']:.4f}" if summary["eval_loss"] is not None else "")
    )
    for c in manifest["checkpoints"]:
        print(f"  kept {c['path']}  (metric {c['metric']:.4f})")
    if manifest["final"]:
        print(f"  final {manifest['final']['path']}")
    print(f"  metrics: {summary['out_dir']}/metrics.jsonl, manifest: {summary['out_dir']}/checkpoints.json")
    if "teacher_cache" in summary:
        c = summary["teacher_cache"]
        print(
            f"  teacher top-{c['k']} cache: {c['documents']} documents, {c['megabytes']:.1f} MB; "
            f"{c['batches_from_cache']} batches from the cache, {c['batches_through_teacher']} through the teacher"
        )
