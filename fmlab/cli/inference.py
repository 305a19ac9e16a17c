"""generate: Apple's generate flags, with speculative decoding."""

from __future__ import annotations

import sys

from fmlab.checkpoints.assets import load_base, load_draft, load_tokenizer
from fmlab.checkpoints.run_dir import resolve_adapter, resolve_draft
from fmlab.data.chat_template import GENERATION_PROMPT, encode_prompt
from fmlab.data.validate import DataError, read_messages
from fmlab.errors import FmlabError
from fmlab.infer import constrained
from fmlab.infer.acceptance import measure_acceptance
from fmlab.infer.generate import generate, stop_ids
from fmlab.infer.sampling import Sampling
from fmlab.infer.speculative import speculative_generate
from fmlab.model.precision import AUTO, PRECISIONS, choose_precision, describe_choice, resolve_device

# --- generate (inference: base, adapter, speculative decoding) ------------------------------------


def add_generate(sub):
    p = sub.add_parser(
        "generate", help="generate replies with the base, an adapter and optionally a draft (Apple: examples.generate)"
    )
    p.add_argument(
        "-p",
        "--prompt",
        required=True,
        help="user text; templated text (containing <turn_start>); or a .jsonl file of message "
        "lists, one prompt per line (training samples lose their last assistant turn)",
    )
    p.add_argument(
        "--precision",
        default=AUTO,
        choices=PRECISIONS,
        help="default auto: bf16-mixed where bf16 is fast here, else f32",
    )
    p.add_argument("-bs", "--batch-size", type=int, default=1, help="prompts decoded together (left-padded)")
    p.add_argument("-t", "--temperature", type=float, default=1.0, help="<= 1e-5 means greedy")
    p.add_argument("--top-k", type=int, default=50, help="0 turns top-k off")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("-m", "--max-new-tokens", type=int, default=50)
    p.add_argument("-c", "--checkpoint", help="adapter file, or an adapter run directory (its best checkpoint)")
    p.add_argument("--compile-model", action="store_true", help="torch.compile the target model")
    p.add_argument(
        "--draft-checkpoint",
        help="decode speculatively with a draft: 'default' (the assets' draft-model.pt), a draft "
        "checkpoint file, or a draft run directory (its best draft by acceptance, else eval loss)",
    )
    p.add_argument(
        "--num-draft-tokens",
        "--num_draft_tokens",
        dest="num_draft_tokens",
        type=int,
        default=5,
        help="tokens the draft proposes per round (Apple spells it --num_draft_tokens)",
    )
    p.add_argument("--seed", type=int, default=0)
    guide = p.add_mutually_exclusive_group()
    guide.add_argument(
        "--schema",
        metavar="FILE",
        help="constrain every reply to JSON valid under this JSON schema (a schema, or a response_format dict)",
    )
    guide.add_argument("--choices", help="constrain every reply to one of these comma-separated choices, e.g. yes,no")
    guide.add_argument("--regex", help="constrain every reply to match this regular expression as a whole")
    p.add_argument("--assets", help="assets directory (default: $FMLAB_ASSETS or the embedded fmlab-tiny)")
    p.add_argument("--device", help="cpu, cuda, mps (default: the best available)")
    p.add_argument(
        "--output",
        choices=["text", "jsonl"],
        default="text",
        help="text: replies and statistics for reading; jsonl: one JSON record per prompt",
    )
    p.set_defaults(func=cmd_generate)


def _check_generate_flags(args):
    problems = [
        f"{flag} must be {rule}, got {value}"
        for flag, value, ok, rule in (
            ("--max-new-tokens", args.max_new_tokens, args.max_new_tokens >= 1, "at least 1"),
            ("--batch-size", args.batch_size, args.batch_size >= 1, "at least 1"),
            ("--temperature", args.temperature, args.temperature >= 0, "0 or more"),
            ("--top-k", args.top_k, args.top_k >= 0, "0 or more"),
            ("--top-p", args.top_p, 0 < args.top_p <= 1, "in (0, 1]"),
            ("--num-draft-tokens", args.num_draft_tokens, args.num_draft_tokens >= 1, "at least 1"),
        )
        if not ok
    ]
    if problems:
        raise FmlabError("; ".join(problems))


def _generate_prompts(tokenizer, prompt: str) -> list[tuple[str, list[int]]]:
    """(label, prompt ids) per prompt: a JSONL file, templated text, or one user turn."""
    from pathlib import Path

    if prompt.endswith(".jsonl"):
        if not Path(prompt).is_file():
            raise FmlabError(f"{prompt}: no such prompt file (-p takes text or a .jsonl of message lists)")
        try:
            samples = read_messages(prompt, "prompt")
        except DataError as err:  # a file of training samples (e.g. a test split) works too
            try:
                samples = read_messages(prompt, "train")
            except DataError:
                raise err from None
            print(
                f"note: {prompt} holds training samples: generating for each without its last assistant turn",
                file=sys.stderr,
            )
            for s in samples:
                s.messages = s.prompt
        return [(s.where, encode_prompt(tokenizer, s.messages, s.tools)) for s in samples]
    if "<turn_start>" in prompt:  # already templated: add the generation prompt if it is missing
        text = prompt.replace("\n", "<n>")
        text += "" if text.rstrip().endswith(GENERATION_PROMPT) else GENERATION_PROMPT
        ids = tokenizer.encode(text)
        ids = ids[1:] if ids and ids[0] == tokenizer.space_id else ids
        return [(prompt, [tokenizer.eos_id] + ids)]
    return [(prompt, encode_prompt(tokenizer, [{"role": "user", "content": prompt}]))]


def _constraint(tokenizer, args):
    """The grammar of --schema / --choices / --regex, or None."""
    if args.schema:
        return constrained.schema_file(tokenizer, args.schema)
    if args.choices is not None:
        options = [c.strip() for c in args.choices.split(",") if c.strip()]
        return constrained.choices(tokenizer, options, "--choices")
    if args.regex is not None:
        return constrained.regex(tokenizer, args.regex, "--regex")
    return None


def _constrained_speculative(model, draft, prompts, stop, args, sampling, precision, constraint) -> dict:
    """measure_acceptance's record (outputs, per-prompt stats, totals) for decoding under a constraint."""
    outputs, runs = [], []
    for ids in prompts:
        out, stats = speculative_generate(
            model,
            draft,
            ids,
            stop,
            args.max_new_tokens,
            args.num_draft_tokens,
            sampling,
            precision,
            constraint=constraint,
        )
        outputs.append(out)
        runs.append({**stats, "latency_s": stats["seconds"]})
    totals = {key: sum(r[key] for r in runs) for key in ("proposed", "accepted", "rounds", "new_tokens")}
    return {
        **totals,
        "acceptance_rate": totals["accepted"] / max(totals["proposed"], 1),
        "mean_accepted_length": totals["accepted"] / max(totals["rounds"], 1),
        "tokens_per_round": totals["new_tokens"] / max(totals["rounds"], 1),
        "outputs": outputs,
        "per_prompt": runs,
    }


def cmd_generate(args):
    import json

    import torch

    _check_generate_flags(args)
    tokenizer = load_tokenizer(args.assets)
    constraint = _constraint(tokenizer, args)  # before loading a model: a bad schema fails at once
    prompts = _generate_prompts(tokenizer, args.prompt)
    device = resolve_device(args.device)
    model = load_base(args.assets, checkpoint=resolve_adapter(args.checkpoint), device=device)
    draft = None
    if args.draft_checkpoint:
        draft = load_draft(args.assets, checkpoint=resolve_draft(args.draft_checkpoint), device=device)
        if draft.config.vocab_size != model.config.vocab_size:
            raise FmlabError(
                f"draft vocabulary {draft.config.vocab_size} != base vocabulary "
                f"{model.config.vocab_size}: this draft cannot propose tokens for this base"
            )
    choice = choose_precision(args.precision, device, decoding=True)
    print(describe_choice(choice), file=sys.stderr)
    precision = choice.precision
    if precision == "bf16":  # bf16 weights throughout (Apple's reportedly degenerate mode)
        model, draft = model.to(torch.bfloat16), draft.to(torch.bfloat16) if draft is not None else None
    if args.compile_model:
        model = torch.compile(model)
    sampling = Sampling(args.temperature, args.top_k or None, args.top_p, args.seed)
    records = []
    if draft is None:
        outs = generate(
            model,
            tokenizer,
            [ids for _, ids in prompts],
            args.max_new_tokens,
            sampling,
            batch_size=args.batch_size,
            precision=precision,
            constraint=constraint,
        )
        for (label, ids), g in zip(prompts, outs):
            records.append(
                {
                    "prompt": label,
                    "text": g.text,
                    "prompt_tokens": len(ids),
                    "tokens": len(g.token_ids),
                    "finish_reason": g.finish_reason,
                    "ttft_s": g.ttft_s,
                    "latency_s": g.latency_s,
                    "tokens_per_s": g.tokens_per_s,
                }
            )
    else:
        if args.batch_size > 1:
            print("note: speculative decoding runs one prompt at a time; --batch-size is ignored", file=sys.stderr)
        stop = stop_ids(tokenizer)
        if constraint is not None:
            spec = _constrained_speculative(
                model, draft, [ids for _, ids in prompts], stop, args, sampling, precision, constraint
            )
        else:
            spec = measure_acceptance(
                model,
                draft,
                [ids for _, ids in prompts],
                args.num_draft_tokens,
                args.max_new_tokens,
                stop=stop,
                sampling=sampling,
                precision=precision,
                time_plain=False,
                vocab_limit=len(tokenizer),
            )
        for (label, ids), out, stats in zip(prompts, spec["outputs"], spec["per_prompt"]):
            stats = dict(stats)
            latency = stats.pop("latency_s")
            records.append(
                {
                    "prompt": label,
                    "text": tokenizer.decode([t for t in out if t not in stop]),
                    "prompt_tokens": len(ids),
                    "tokens": len(out),
                    "finish_reason": "stop" if out and out[-1] in stop else "length",
                    "ttft_s": stats["ttft_s"],
                    "latency_s": latency,
                    "tokens_per_s": len(out) / max(latency, 1e-9),
                    "speculative": stats,
                }
            )
    for i, r in enumerate(records):
        if args.output == "jsonl":
            print(json.dumps(r), flush=True)
            continue
        if len(records) > 1:
            print(f"--- [{i + 1}/{len(records)}] {r['prompt']}")
        print(r["text"])
        print(
            f"[{r['tokens']} tokens, {r['finish_reason']}, ttft {r['ttft_s'] * 1000:.0f} ms, "
            f"{r['tokens_per_s']:.1f} tokens/s]"
        )
    if draft is not None:
        print(
            f"speculative decoding (k={args.num_draft_tokens}): accepted {spec['accepted']}/{spec['proposed']} "
            f"drafted tokens (acceptance rate {spec['acceptance_rate']:.1%}), mean accepted length "
            f"{spec['mean_accepted_length']:.2f}, {spec['tokens_per_round']:.2f} tokens per target forward",
            file=sys.stderr if args.output == "jsonl" else sys.stdout,
        )
    return 0
