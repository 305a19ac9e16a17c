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


def add_build_assets(sub):
    p = sub.add_parser("build-assets", help="rebuild the embedded default fmlab-tiny from its seed")
    p.add_argument("--out", default=None, help="assets directory to write (default: the repo's assets/)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="out/build-assets", help="scratch directory for training runs")
    p.set_defaults(func=cmd_build_assets)


def cmd_build_assets(args):
    from .build_assets import REPO_ASSETS, Recipe, build_assets

    manifest = build_assets(args.out or REPO_ASSETS, Recipe(seed=args.seed), work=args.work)
    print(f"built {manifest['name']} in {manifest['seconds']['total_s']:.0f} s; "
          f"base play_format_score {manifest['base_play_format_score']}")


def add_estimate(sub):
    p = sub.add_parser("estimate", help="predicted peak memory for training and generation")
    p.add_argument("--assets", help="assets directory (default: $FMLAB_ASSETS or the embedded fmlab-tiny)")
    p.add_argument("--preset", help="a model preset instead of the assets' config (e.g. afm-3b)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-sequence-length", type=int, default=4095)
    p.add_argument("--precision", default="bf16-mixed", choices=("f32", "bf16-mixed", "bf16", "f16-mixed"))
    p.add_argument("--activation-checkpointing", action="store_true")
    p.set_defaults(func=cmd_estimate)


def cmd_estimate(args):
    from .assets import BASE_CONFIG
    from .common import assets_dir
    from .config import from_tamm_json, preset
    from .estimate import GiB, estimate_generation, estimate_training

    cfg = preset(args.preset) if args.preset else from_tamm_json(assets_dir(args.assets) / BASE_CONFIG)
    print(f"model: {cfg.num_layers} layers ({cfg.num_kv_reuse_layers} KV-reuse), hidden {cfg.hidden_dim}, "
          f"vocab {cfg.vocab_size}; batch {args.batch_size} x {args.max_sequence_length}, {args.precision}"
          + (", activation checkpointing" if args.activation_checkpointing else ""))
    estimates = {}
    for device in ("cpu", "cuda", "mps"):
        estimates[device] = estimate_training(cfg, args.batch_size, args.max_sequence_length, args.precision,
                                              args.activation_checkpointing, device=device)
        gen = estimate_generation(cfg, args.batch_size, args.max_sequence_length, args.precision, device)
        print(f"{device:>5}: training {estimates[device].total / GiB:7.2f} GiB   "
              f"generation {gen.total / GiB:7.2f} GiB")
    print("training breakdown (cuda, GiB): "
          + ", ".join(f"{k} {v / GiB:.2f}" for k, v in estimates["cuda"].rows().items()))


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


def add_train_draft(sub):
    p = sub.add_parser("train-draft", help="distil the draft model against base + adapter "
                                           "(Apple: examples.train_draft_model)")
    p.add_argument("--checkpoint", help="teacher adapter: a file, or an adapter run directory (its best "
                                        "checkpoint by eval loss); default: the base alone")
    _training_flags(p, draft=True)
    p.add_argument("--divergence", default="reverse_kl", choices=("reverse_kl", "forward_kl", "jsd"))
    p.add_argument("--distill-temperature", type=float, default=1.0)
    p.add_argument("--jsd-beta", type=float, default=0.5)
    p.add_argument("--on-policy", type=float, default=0.0, help="fraction of batches scored on the draft's "
                                                                  "own continuations (GKD)")
    p.add_argument("--score-prompts", help="chat JSONL of held-out prompts: score every saved draft by "
                                           "acceptance and speedup (default: --eval-data)")
    p.add_argument("--num-score-prompts", type=int, default=8)
    p.add_argument("--num-draft-tokens", type=int, default=5)
    p.add_argument("--plot", help="write the loss curve PNG here (default: CHECKPOINT_DIR/loss.png)")
    p.set_defaults(func=cmd_train_draft, warmup_fraction=0.1)


def cmd_train_draft(args):
    from .draft import train_draft

    config = _train_config(args, "draft-model", args.draft_precision, args.compile_draft_model, "constant", 1)
    prompts = None
    source = args.score_prompts or args.eval_data
    if source:
        from .data import read_messages

        prompts = [s.messages[:-1] if s.messages[-1]["role"] == "assistant" else s.messages
                   for s in read_messages(source, mode="train" if not args.score_prompts else "prompt")]
        prompts = prompts[:args.num_score_prompts]
    summary = train_draft(args.train_data, args.checkpoint_dir, args.eval_data, args.checkpoint, config,
                          _data_config(args), args.assets, args.divergence, args.distill_temperature, args.jsd_beta,
                          args.on_policy, args.target_precision, args.compile_target_model, prompts,
                          args.num_draft_tokens, args.device, callbacks=_plot_callbacks(args), resume=args.resume)
    _print_summary(summary)
    for row in summary.get("scores", []):
        print(f"  {row['draft']:>24}: acceptance {row['acceptance_rate']:.3f}, speedup {row['speedup']:.2f}x")


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


# --- generate (inference: base, adapter, speculative decoding) ------------------------------------


def add_generate(sub):
    p = sub.add_parser("generate", help="generate replies with the base, an adapter and optionally a draft "
                                        "(Apple: examples.generate)")
    p.add_argument("-p", "--prompt", required=True,
                   help="user text; templated text (containing <turn_start>); or a .jsonl file of message "
                        "lists, one prompt per line (training samples lose their last assistant turn)")
    p.add_argument("--precision", default="bf16-mixed", choices=PRECISIONS)
    p.add_argument("-bs", "--batch-size", type=int, default=1, help="prompts decoded together (left-padded)")
    p.add_argument("-t", "--temperature", type=float, default=1.0, help="<= 1e-5 means greedy")
    p.add_argument("--top-k", type=int, default=50, help="0 turns top-k off")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("-m", "--max-new-tokens", type=int, default=50)
    p.add_argument("-c", "--checkpoint", help="adapter file, or an adapter run directory (its best checkpoint)")
    p.add_argument("--compile-model", action="store_true", help="torch.compile the target model")
    p.add_argument("--draft-checkpoint",
                   help="decode speculatively with a draft: 'default' (the assets' draft-model.pt), a draft "
                        "checkpoint file, or a draft run directory (its best draft by acceptance, else eval loss)")
    p.add_argument("--num-draft-tokens", "--num_draft_tokens", dest="num_draft_tokens", type=int, default=5,
                   help="tokens the draft proposes per round (Apple spells it --num_draft_tokens)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--assets", help="assets directory (default: $FMLAB_ASSETS or the embedded fmlab-tiny)")
    p.add_argument("--device", help="cpu, cuda, mps (default: the best available)")
    p.add_argument("--output", choices=["text", "jsonl"], default="text",
                   help="text: replies and statistics for reading; jsonl: one JSON record per prompt")
    p.set_defaults(func=cmd_generate)


def _check_generate_flags(args):
    problems = [f"{flag} must be {rule}, got {value}" for flag, value, ok, rule in (
        ("--max-new-tokens", args.max_new_tokens, args.max_new_tokens >= 1, "at least 1"),
        ("--batch-size", args.batch_size, args.batch_size >= 1, "at least 1"),
        ("--temperature", args.temperature, args.temperature >= 0, "0 or more"),
        ("--top-k", args.top_k, args.top_k >= 0, "0 or more"),
        ("--top-p", args.top_p, 0 < args.top_p <= 1, "in (0, 1]"),
        ("--num-draft-tokens", args.num_draft_tokens, args.num_draft_tokens >= 1, "at least 1")) if not ok]
    if problems:
        raise FmlabError("; ".join(problems))


def _generate_prompts(tokenizer, prompt: str) -> list[tuple[str, list[int]]]:
    """(label, prompt ids) per prompt: a JSONL file, templated text, or one user turn."""
    from pathlib import Path

    from .chat import GENERATION_PROMPT, encode_prompt

    if prompt.endswith(".jsonl"):
        from .data import DataError, read_messages

        if not Path(prompt).is_file():
            raise FmlabError(f"{prompt}: no such prompt file (-p takes text or a .jsonl of message lists)")
        try:
            samples = read_messages(prompt, "prompt")
        except DataError as err:      # a file of training samples (e.g. a test split) works too
            try:
                samples = read_messages(prompt, "train")
            except DataError:
                raise err from None
            print(f"note: {prompt} holds training samples: generating for each without its last assistant turn",
                  file=sys.stderr)
            for s in samples:
                s.messages = s.messages[:-1]
        return [(s.where, encode_prompt(tokenizer, s.messages, s.tools)) for s in samples]
    if "<turn_start>" in prompt:          # already templated: add the generation prompt if it is missing
        text = prompt.replace("\n", "<n>")
        text += "" if text.rstrip().endswith(GENERATION_PROMPT) else GENERATION_PROMPT
        ids = tokenizer.encode(text)
        ids = ids[1:] if ids and ids[0] == tokenizer.space_id else ids
        return [(prompt, [tokenizer.eos_id] + ids)]
    return [(prompt, encode_prompt(tokenizer, [{"role": "user", "content": prompt}]))]


def _draft_path(spec: str):
    """None for the assets' own draft ('default'), else a draft checkpoint file."""
    from pathlib import Path

    from .checkpointing import best_checkpoint, read_manifest

    if spec == "default":
        return None
    path = Path(spec)
    if path.is_dir():
        best = read_manifest(path).get("best_by_acceptance")
        path = path / best if best else best_checkpoint(path)
    if not path.is_file():
        raise FmlabError(f"{spec}: no such draft checkpoint (use 'default', a draft-model-*.pt file or a "
                         f"draft run directory)")
    return path


def cmd_generate(args):
    import json
    import time

    import torch

    from .assets import load_base, load_draft, load_tokenizer
    from .common import resolve_device
    from .draft import resolve_adapter
    from .generate import generate, stop_ids
    from .sampling import Sampling

    _check_generate_flags(args)
    tokenizer = load_tokenizer(args.assets)
    prompts = _generate_prompts(tokenizer, args.prompt)
    device = resolve_device(args.device)
    model = load_base(args.assets, checkpoint=resolve_adapter(args.checkpoint), device=device)
    draft = None
    if args.draft_checkpoint:
        draft = load_draft(args.assets, checkpoint=_draft_path(args.draft_checkpoint), device=device)
        if draft.config.vocab_size != model.config.vocab_size:
            raise FmlabError(f"draft vocabulary {draft.config.vocab_size} != base vocabulary "
                             f"{model.config.vocab_size}: this draft cannot propose tokens for this base")
    if args.precision == "bf16":     # bf16 weights throughout (Apple's reportedly degenerate mode)
        model, draft = model.to(torch.bfloat16), draft.to(torch.bfloat16) if draft is not None else None
    if args.compile_model:
        model = torch.compile(model)
    sampling = Sampling(args.temperature, args.top_k or None, args.top_p, args.seed)
    records = []
    if draft is None:
        outs = generate(model, tokenizer, [ids for _, ids in prompts], args.max_new_tokens, sampling,
                        args.batch_size, args.precision)
        for (label, ids), g in zip(prompts, outs):
            records.append({"prompt": label, "text": g.text, "prompt_tokens": len(ids), "tokens": len(g.token_ids),
                            "finish_reason": g.finish_reason, "ttft_s": g.ttft_s, "latency_s": g.latency_s,
                            "tokens_per_s": g.tokens_per_s})
    else:
        from .speculative import speculative_generate

        if args.batch_size > 1:
            print("note: speculative decoding runs one prompt at a time; --batch-size is ignored", file=sys.stderr)
        stop = stop_ids(tokenizer)
        for label, ids in prompts:
            start = time.perf_counter()
            out, stats = speculative_generate(model, draft, ids, stop, args.max_new_tokens, args.num_draft_tokens,
                                              sampling, args.precision)
            latency = time.perf_counter() - start
            records.append({"prompt": label, "text": tokenizer.decode([t for t in out if t not in stop]),
                            "prompt_tokens": len(ids), "tokens": len(out),
                            "finish_reason": "stop" if out and out[-1] in stop else "length",
                            "ttft_s": stats["ttft_s"], "latency_s": latency,
                            "tokens_per_s": len(out) / max(latency, 1e-9), "speculative": stats})
    for i, r in enumerate(records):
        if args.output == "jsonl":
            print(json.dumps(r), flush=True)
            continue
        if len(records) > 1:
            print(f"--- [{i + 1}/{len(records)}] {r['prompt']}")
        print(r["text"])
        print(f"[{r['tokens']} tokens, {r['finish_reason']}, ttft {r['ttft_s'] * 1000:.0f} ms, "
              f"{r['tokens_per_s']:.1f} tokens/s]")
    if draft is not None:
        proposed = sum(r["speculative"]["proposed"] for r in records)
        accepted = sum(r["speculative"]["accepted"] for r in records)
        rounds = sum(r["speculative"]["rounds"] for r in records)
        tokens = sum(r["tokens"] for r in records)
        print(f"speculative decoding (k={args.num_draft_tokens}): accepted {accepted}/{proposed} drafted tokens "
              f"(acceptance rate {accepted / max(proposed, 1):.1%}), mean accepted length "
              f"{accepted / max(rounds, 1):.2f}, {tokens / max(rounds, 1):.2f} tokens per target forward",
              file=sys.stderr if args.output == "jsonl" else sys.stdout)
    return 0


# --- export (.fmadapter package and its verification) -----------------------------------------------


def add_export(sub):
    p = sub.add_parser("export", help="write an .fmadapter package (Apple's export_fmadapter flags)")
    p.add_argument("-o", "--output-dir", required=True, help="directory for <name>.fmadapter")
    p.add_argument("-n", "--adapter-name", required=True, help="package name: ASCII letters, digits and _ only")
    p.add_argument("-c", "--checkpoint", required=True,
                   help="adapter checkpoint (Apple .pt or fmlab .safetensors), or a training run directory (its best)")
    p.add_argument("-d", "--draft-checkpoint",
                   help="draft checkpoint (Apple draft layout .pt), or a draft run directory (its best)")
    p.add_argument("--author", default="3P developer", help='metadata author (default: "3P developer")')
    p.add_argument("--description", default="", help="metadata description")
    p.add_argument("--license", default="", help="metadata license")
    p.add_argument("--assets", help="assets directory of the base (default: $FMLAB_ASSETS or the embedded fmlab-tiny)")
    p.add_argument("--base-signature", help="base model signature (default: Apple's for afm-3b, else the "
                                            "sha1 of the assets' base-model.pt)")
    p.add_argument("--num-draft-tokens", type=int, default=5,
                   help="metadata speculativeDecodingDraftTokenCount (default: 5)")
    p.add_argument("--no-coreml", action="store_true", help="do not add draft.mlpackage (Core ML draft)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="accepted for Apple compatibility")
    p.add_argument("-q", "--quiet", action="count", default=0, help="print only the package path")
    p.set_defaults(func=cmd_export)


def cmd_export(args):
    from .export import export_fmadapter, package_sizes

    log = (lambda *_: None) if args.quiet else print
    path = export_fmadapter(args.output_dir, args.adapter_name, args.checkpoint, args.draft_checkpoint,
                            author=args.author, description=args.description, license=args.license,
                            assets=args.assets, base_signature=args.base_signature,
                            num_draft_tokens=args.num_draft_tokens, coreml=not args.no_coreml, log=log)
    if args.quiet:
        print(path)
        return 0
    for name, size in package_sizes(path).items():
        print(f"  {name:<24} {size:>14,} bytes")
    return 0


def add_verify_fmadapter(sub):
    p = sub.add_parser("verify-fmadapter", help="read an .fmadapter package back and check it numerically")
    p.add_argument("path", help="the <name>.fmadapter directory")
    p.add_argument("-c", "--checkpoint", help="source adapter checkpoint (default: the one the manifest records)")
    p.add_argument("-d", "--draft-checkpoint", help="source draft checkpoint (default: from the manifest)")
    p.add_argument("--assets", help="assets directory of the base (default: the one the manifest records)")
    p.add_argument("--prompts", type=int, default=4, help="prompts for the draft acceptance check (default: 4)")
    p.add_argument("-m", "--max-new-tokens", type=int, default=48, help="tokens per prompt (default: 48)")
    p.add_argument("--json", action="store_true", help="print the measured numbers as JSON after the report")
    p.set_defaults(func=cmd_verify_fmadapter)


def cmd_verify_fmadapter(args):
    import json

    from .verify import verify_fmadapter

    report = verify_fmadapter(args.path, args.checkpoint, args.draft_checkpoint, args.assets,
                              num_prompts=args.prompts, max_new_tokens=args.max_new_tokens)
    print(report.text())
    if args.json:
        print(json.dumps(report.numbers, indent=2, default=str))
    return 0 if report.ok else 1


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
