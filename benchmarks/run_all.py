"""Run every benchmark side by side and write `benchmarks/RESULTS.md` with tables and PNG plots.

    python -m benchmarks.run_all [--quick]

Each figure is a ratio measured in one run on one machine (recorded at the top). Run it on an idle
machine: these CPUs are noisy and a second job on the cores invalidates every number.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def packing() -> str:
    import sys

    from benchmarks import bench_packing

    buf = io.StringIO()
    argv, sys.argv = sys.argv, ["bench_packing", str(HERE.parent / "data" / "train.jsonl"), "--max-len", "4095", "1024"]
    try:
        with contextlib.redirect_stdout(buf):
            bench_packing.main()
    finally:
        sys.argv = argv
    return buf.getvalue()


def export_timing() -> dict:
    import tempfile

    from fmlab.checkpoints.apple_format import save_adapter
    from fmlab.checkpoints.assets import REPO_ASSETS, load_base
    from fmlab.export.package import export_fmadapter

    with tempfile.TemporaryDirectory() as tmp:
        adapter = save_adapter(load_base(), Path(tmp) / "adapter.pt")
        start = time.perf_counter()
        package = export_fmadapter(tmp, "bench", adapter, REPO_ASSETS / "draft-model.pt")
        seconds = time.perf_counter() - start
        sizes = {p.relative_to(package).as_posix(): p.stat().st_size for p in package.rglob("*") if p.is_file()}
    return {"seconds": seconds, "sizes": sizes}


def bar_plot(path: Path, title: str, values: dict[str, float], unit: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.barh(list(values), list(values.values()), color=["#4c72b0" if "fmlab" in k else "#999" for k in values])
    ax.set_xlabel(unit)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def decode_section(decode: dict) -> list[str]:
    lines = [
        "## Batch-1 decoding (128 new tokens after a 64-token prompt, greedy)",
        "",
        "Same Llama-style weights on both sides, cast to the row's dtype. Compiled: fmlab's "
        "`compile_model=True` against transformers' static-cache recipe (`model.forward = "
        'torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)`).',
        "",
        "| dtype | mode | fmlab | transformers `generate` (static cache) | fmlab / peer |",
        "|---|---|---:|---:|---:|",
    ]
    plot = {}
    for r in decode["decode"]:
        t = r["tokens_per_s"]
        for mode in ("eager", "compiled"):
            if f"fmlab {mode}" in t:
                lines.append(
                    f"| {r['dtype']} | {mode} | {t[f'fmlab {mode}']:,.0f} tok/s | "
                    f"{t[f'transformers {mode}']:,.0f} tok/s | **{r['ratio'][mode]:.2f}×** |"
                )
                plot[f"fmlab {mode} {r['dtype']}"] = t[f"fmlab {mode}"]
                plot[f"transformers {mode} {r['dtype']}"] = t[f"transformers {mode}"]
        if "fmlab compiled / transformers eager" in r["ratio"]:
            lines.append(
                f"| {r['dtype']} | fmlab compiled / transformers eager | | | "
                f"{r['ratio']['fmlab compiled / transformers eager']:.2f}× |"
            )
    bar_plot(HERE / "decode.png", "batch-1 decode", plot, "tokens/s")
    lines += [
        "",
        "![decode](decode.png)",
        "",
        "## Speculative decoding (embedded base + shipped draft, k=5, T=0)",
        "",
        "A round costs k draft steps and one target check of k + 1 tokens; per call, in the same loop:",
        "",
        "| mode | draft step | target step | draft / target | target check (k+1) / target step |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in decode["draft_cost"]:
        ms = r["ms_per_call"]
        lines.append(
            f"| {'compiled' if r['compiled'] else 'eager'} | {ms['draft']:.2f} ms | {ms['target']:.2f} ms | "
            f"**{r['draft_over_target']:.3f}** | {r['check_over_step']:.2f} |"
        )
    lines += [""] + speculative_table(decode["speculative"])
    if decode.get("distilled"):
        lines += [
            "",
            "With the best distilled draft of `make demo` (notebook 04's run `out/draft`, best by acceptance) "
            "for its teacher, the base + notebook 02's best adapter, on the same held-out play prompts:",
            "",
        ]
        lines += speculative_table(decode["distilled"])
    else:
        lines += ["", "Run `make demo` first to add the distilled draft of notebook 04 to this section."]
    lines.append("")
    return lines


def speculative_table(results: list[dict]) -> list[str]:
    lines = [
        "| mode | speedup over plain decoding (same mode) | acceptance rate | output identical |",
        "|---|---:|---:|---|",
    ]
    for r in results:
        lines.append(
            f"| {'compiled' if r['compiled'] else 'eager'} | **{r['speedup']:.2f}×** | "
            f"{r['acceptance_rate']:.3f} | {r['identical']} |"
        )
    return lines


def distilled_speculative(repeats: int, compiled: bool) -> list[dict]:
    """Speculative speedup with `make demo`'s best distilled draft and adapter, if they exist."""
    from benchmarks.bench_decode import speculative_speedup
    from fmlab.checkpoints.run_dir import resolve_adapter, resolve_draft

    out = HERE.parent / "out"
    if not ((out / "draft" / "checkpoints.json").exists() and (out / "adapter" / "checkpoints.json").exists()):
        return []
    draft, adapter = resolve_draft(out / "draft"), resolve_adapter(out / "adapter")
    return [
        speculative_speedup(128, repeats, adapter=adapter, draft_checkpoint=draft, compiled=c)
        for c in ((False, True) if compiled else (False,))
    ]


def previous_training() -> dict:
    """The training results of the last run (`results.json`), by dtype; {} if none in this format."""
    try:
        train = json.loads((HERE / "results.json").read_text())["train"]
    except (OSError, KeyError, ValueError):
        return {}
    return {k: v for k, v in train.items() if isinstance(v, dict) and v.get("dtype") == k and "modes" in v}


def bench_dtypes(choice, bf16: str) -> tuple[tuple[str, ...], str]:
    """The precisions to measure and why: f32 always; bf16 where `auto` picks it (a native-bf16 CPU), or
    when asked for. Where bf16 is emulated it runs ~50x slower on both sides, minutes per table row."""
    if bf16 == "yes" or (bf16 == "auto" and choice.precision == "bf16-mixed"):
        return ("fp32", "bf16"), ""
    return ("fp32",), (
        f"bf16 was not measured in this run: `auto` picks {choice.precision} on this CPU ({choice.reason}); "
        "`python -m benchmarks.run_all --bf16 yes` forces it."
    )


def train_section(train: dict) -> list[str]:
    dtype = train["dtype"]
    precision = "bf16 autocast, frozen weights in bf16" if dtype == "bf16" else "f32, no autocast on either side"
    lines = [
        f"## LoRA training throughput in {dtype} (tokens/s, batch {train['batch']} × {train['seq']}, {precision})",
        "",
        f"MFU: fmlab's model FLOP/s over this machine's measured {dtype} matmul peak "
        f"({train['peak_gflops']:.0f} GFLOP/s, a 512 × 1024 @ 1024 × 1024 product on all threads), counting "
        "4N per token for the frozen base's forward and input-gradient backward (N: the matmul parameters, "
        f"tied LM head included) plus 6·L·T·d for causal attention: {train['flops_per_token'] / 1e6:.1f} MFLOP "
        "per token.",
        "",
        "| mode | fmlab | fmlab (AFM default: KV-reuse layers) | transformers + peft | fmlab / peer | fmlab MFU |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for mode, r in train["modes"].items():
        t = r["tokens_per_s"]
        lines.append(
            f"| {mode} | {t['fmlab']:,.0f} | {t['fmlab (AFM default)']:,.0f} | "
            f"{t['transformers+peft']:,.0f} | **{r['ratio']:.2f}×** | {r['mfu']:.0%} |"
        )
        bar_plot(HERE / f"train_{dtype}_{mode}.png", f"LoRA training, {dtype} {mode}", t, "tokens/s")
    return lines + ["", f"![training {dtype} eager](train_{dtype}_eager.png)", ""]


def main(quick: bool = False, bf16: str = "auto"):
    from benchmarks import bench_decode, bench_train
    from benchmarks.timing import machine
    from fmlab.model.precision import choose_precision, describe_choice

    repeats = 3 if quick else 5
    choice = choose_precision(None, "cpu")
    dtypes, skipped = bench_dtypes(choice, bf16)
    lines = [
        "# fmlab benchmarks",
        "",
        f"Machine: {machine()}. Generated by `python -m benchmarks.run_all`.",
        f"`auto` on this machine: {describe_choice(choice)}.",
        "Every ratio compares two measurements taken in the same run, interleaved, median of "
        f"{repeats} repeats after warm-up.",
        "",
    ]
    modes = ("eager",) if quick else ("eager", "compiled")
    train = {dtype: bench_train.run(repeats=repeats, modes=modes, dtype=dtype) for dtype in dtypes}
    for result in train.values():
        lines += train_section(result)
    if skipped:
        lines += [skipped, ""]
        earlier = previous_training().get("bf16")
        if earlier:  # a CPU without native bf16 keeps the table a native one measured, saying so
            train["bf16"] = earlier
            lines += [f"The bf16 table below is from an earlier run, on {earlier['machine']}.", ""]
            lines += train_section(earlier)
    decode = bench_decode.run(128, 64, repeats, compiled=not quick, dtypes=dtypes)
    decode["distilled"] = distilled_speculative(repeats, compiled=not quick)
    lines += decode_section(decode)
    lines += ["## Packing efficiency (toy dataset)", "", packing(), ""]
    exp = export_timing()
    lines += [
        "## Export (fmlab-tiny, zero adapter + shipped draft)",
        "",
        f"Package written and palettised in {exp['seconds']:.1f} s.",
        "",
        "| file | bytes |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {size:,} |" for name, size in sorted(exp["sizes"].items())]
    (HERE / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return {"train": train, "decode": decode, "export": exp}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeats, eager only")
    ap.add_argument(
        "--bf16", choices=["auto", "yes", "no"], default="auto", help="measure bf16 too (auto: where auto picks it)"
    )
    args = ap.parse_args()
    result = main(args.quick, args.bf16)
    (HERE / "results.json").write_text(json.dumps(result, indent=2, default=str))
