"""`fmlab doctor`: is this machine and this assets directory ready to train and export?

Each check gives OK, WARN (works, with a caveat) or FAIL (a command will fail), and every WARN or FAIL
comes with its fix. It never loads a model into memory: package versions come from their metadata,
weights are checked key by key and shape by shape on a memory map, so it runs in seconds on Apple's 3B
assets too (the checksums, when a manifest lists them, read each file once). The one exception is
opt-in: `check_against_tamm` runs the assets through Apple's reference library tamm and through fmlab.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from fmlab.checkpoints.apple_format import (
    _canonical,
    _check_keys,
    apple_key_map,
    load_torch,
)
from fmlab.checkpoints.assets import (
    ASSET_FILES,
    BASE_CONFIG,
    BASE_WEIGHTS,
    DRAFT_CONFIG,
    DRAFT_WEIGHTS,
    TOKENIZER,
    assets_dir,
    recommended,
)
from fmlab.data.tokenizer import Tokenizer
from fmlab.errors import FmlabError
from fmlab.files import file_sha
from fmlab.model.config import from_tamm_json
from fmlab.model.lora import is_lora_name
from fmlab.model.precision import AUTO, ENV, bf16_supported, choose_precision, cpu_name, probe, resolve_device
from fmlab.model.transformer import build_model

OK, WARN, FAIL = "OK", "WARN", "FAIL"
TEMPLATE_FILES = ("checkpoint_spec.yaml", "weights_template.bin", "draft.mil")

# name: (minimum, below (exclusive), required, what needs it)
PACKAGES = {
    "torch": ("2.6", None, True, "everything"),
    "numpy": (None, "2.4", True, "coremltools 9.0 breaks on numpy 2.4"),
    "sentencepiece": ("0.2", None, True, "the tokenizer"),
    "safetensors": ("0.4", None, True, "native adapter files"),
    "coremltools": ("9.0", "9.1", False, "the Core ML draft in .fmadapter exports"),
    "matplotlib": ("3.8", None, False, "loss plots"),
    "pandas": ("2.1", None, False, "notebook tables"),
    "ipywidgets": ("8.1", None, False, "live notebook widgets"),
    "papermill": ("2.6", None, False, "make demo / make test (headless notebooks)"),
}


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text.split("+")[0])[:3])


def check_python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info < (3, 11):  # noqa: UP036 (a checkout can be run by any python)
        return Check("python", FAIL, version, "fmlab needs Python 3.11 or newer")
    return Check("python", OK, version)


def check_package(name: str) -> Check:
    low, high, required, why = PACKAGES[name]
    try:
        version = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return Check(name, FAIL if required else WARN, f"not installed (needed for {why})", f"pip install {name}")
    pin = ",".join(p for p in (low and f">={low}", high and f"<{high}") if p)
    if (low and _version(version) < _version(low)) or (high and _version(version) >= _version(high)):
        return Check(name, FAIL if required else WARN, f"{version}, need {pin} ({why})", f'pip install "{name}{pin}"')
    return Check(name, OK, version)


def check_devices() -> list[Check]:
    import torch

    cpu = probe("cpu")
    auto = choose_precision(AUTO, "cpu")
    speeds = f"matmul on one thread: f32 {cpu.f32_gflops:.1f} GFLOP/s, bf16 {cpu.bf16_gflops:.1f} GFLOP/s"
    slow = cpu.precision == "f32"  # the probe found bf16 slower than f32
    rows = [
        Check(
            "cpu",
            WARN if slow else OK,
            f"{cpu_name()}, {torch.get_num_threads()} threads, {speeds}; auto picks {auto.precision}"
            + (f" ({auto.reason})" if auto.reason.startswith(ENV) else "")
            + f", {choose_precision(AUTO, 'cpu', decoding=True).precision} for decoding",
            f"bf16 is {cpu.f32_gflops / max(cpu.bf16_gflops, 1e-9):.0f}x slower than f32 on this CPU (no native bf16): "
            "keep --precision auto (f32 here); an explicit bf16-mixed would be that much slower"
            if slow
            else "",
        )
    ]
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        memory = torch.cuda.get_device_properties(0).total_memory / 2**30
        bf16 = bf16_supported(torch.device("cuda"))
        rows.append(
            Check(
                "cuda",
                OK if bf16 else WARN,
                f"{name}, {memory:.0f} GiB, bf16 {'yes' if bf16 else 'no'}",
                "" if bf16 else "this GPU has no bf16: train with --precision f16-mixed or f32",
            )
        )
    else:
        rows.append(Check("cuda", OK, "not available"))
    mps = getattr(torch.backends, "mps", None)
    rows.append(Check("mps", OK, "available" if mps and mps.is_available() else "not available"))
    rows.append(Check("device in use", OK, str(resolve_device())))
    return rows


def planned_bytes(assets: Path, keep_best: int) -> dict[str, int]:
    """Disk a full workflow writes: an adapter run (best N + final + a resume state with Adam's two
    moments), a draft run likewise, and one export (fp16 adapter + draft)."""

    cfg = from_tamm_json(assets / BASE_CONFIG)
    lora = sum(p.numel() for n, p in build_model(cfg, device="meta").named_parameters() if is_lora_name(n))
    draft = (assets / DRAFT_WEIGHTS).stat().st_size
    return {
        "adapter run": 4 * lora * (keep_best + 1 + 3),
        "draft run": draft * (keep_best + 1 + 3),
        "export": 2 * lora + draft,
    }


def check_disk(out_dir: Path, assets: Path, keep_best: int) -> Check:
    existing = next(p for p in [out_dir, *out_dir.parents] if p.exists())
    free = shutil.disk_usage(existing).free
    try:
        plan = planned_bytes(assets, keep_best)
    except (FmlabError, OSError) as err:
        return Check("disk space", WARN, f"{free / 2**30:.1f} GiB free at {existing}; no plan ({err})")
    need = sum(plan.values())
    detail = (
        f"{free / 2**30:.1f} GiB free at {existing}; a run writes about {need / 2**30:.2f} GiB ("
        + ", ".join(f"{k} {v / 2**30:.2f}" for k, v in plan.items())
        + f"; --keep-best {keep_best})"
    )
    if free < need:
        return Check("disk space", FAIL, detail, "free space, choose another --checkpoint-dir or lower --keep-best")
    if free < 2 * need:
        return Check("disk space", WARN, detail, "little room to spare: a failed write stops the run")
    return Check("disk space", OK, detail)


def _check_weights(path: Path, config: Path) -> str | None:
    """Keys and shapes of an Apple-layout weights file against its config, on a memory map."""

    cfg = from_tamm_json(config)
    raw = load_torch(path)
    if not isinstance(raw, dict):
        return f"{path}: holds a {type(raw).__name__}, not a state dict"
    state = {_canonical(k): v for k, v in raw.items()}
    entries = apple_key_map(cfg)
    _check_keys(state, {_canonical(e.apple) for e in entries}, str(path))
    reference = build_model(cfg, device="meta").state_dict()
    for e in entries:
        want = tuple(reference[e.fmlab].shape)
        if e.rows is not None:
            want = (e.rows.stop - e.rows.start, *want[1:])
        got = tuple(state[_canonical(e.apple)].shape)
        if got != want:
            return f"{e.apple}: file {got} vs config {want}"
    return None


def check_assets(assets: Path) -> list[Check]:
    fix = "point --assets (or FMLAB_ASSETS) at a complete assets directory, e.g. the toolkit's assets/"
    if not assets.is_dir():
        return [Check("assets", FAIL, f"{assets} is not a directory", fix)]
    missing = [f for f in ASSET_FILES if not (assets / f).is_file()]
    rows = [
        Check(
            "assets files",
            FAIL if missing else OK,
            f"missing {', '.join(missing)} in {assets}" if missing else f"all present in {assets}",
            fix if missing else "",
        )
    ]
    template = [f for f in TEMPLATE_FILES if (assets / f).is_file()]
    rows.append(
        Check(
            "draft template",
            OK if len(template) in (0, 3) else WARN,
            "present"
            if len(template) == 3
            else "absent: exports carry the Core ML draft only"
            if not template
            else f"incomplete: only {', '.join(template)}",
            "" if len(template) in (0, 3) else f"copy all of {', '.join(TEMPLATE_FILES)}",
        )
    )
    rows += _check_manifest(assets)
    configs = {}
    for name in (BASE_CONFIG, DRAFT_CONFIG):
        if (assets / name).is_file():
            try:
                configs[name] = from_tamm_json(assets / name)
                rows.append(Check(name, OK, f"vocab {configs[name].vocab_size}, {configs[name].num_layers} layers"))
            except FmlabError as err:
                rows.append(Check(name, FAIL, str(err), fix))
    if len(configs) == 2 and len({c.vocab_size for c in configs.values()}) == 2:
        rows.append(Check("vocabularies", FAIL, "base and draft configs differ in vocab_size", fix))
    if (assets / TOKENIZER).is_file():
        try:
            tokenizer = Tokenizer.from_file(assets / TOKENIZER)
            base = configs.get(BASE_CONFIG)
            if base and tokenizer.vocab_size > base.vocab_size:
                raise FmlabError(f"{tokenizer.vocab_size} pieces but base vocab_size {base.vocab_size}")
            rows.append(Check(TOKENIZER, OK, f"{tokenizer.vocab_size} pieces, special pieces present"))
        except FmlabError as err:
            rows.append(Check(TOKENIZER, FAIL, str(err), fix))
    for weights, config in ((BASE_WEIGHTS, BASE_CONFIG), (DRAFT_WEIGHTS, DRAFT_CONFIG)):
        if (assets / weights).is_file() and config in configs:
            try:
                problem = _check_weights(assets / weights, assets / config)
            except FmlabError as err:
                problem = str(err).replace("\n", " ")
            rows.append(
                Check(
                    weights,
                    FAIL if problem else OK,
                    problem or "keys and shapes match the config",
                    fix if problem else "",
                )
            )
    return rows


def _check_manifest(assets: Path) -> list[Check]:
    path = assets / "manifest.json"
    if not path.is_file():
        return [Check("checksums", OK, "no manifest.json: nothing to check against (Apple's assets have none)")]
    try:
        files = json.loads(path.read_text())["files"]
    except (ValueError, KeyError, TypeError) as err:
        return [Check("checksums", FAIL, f"{path}: unreadable ({err})", "rebuild with fmlab build-assets")]
    bad = [
        name
        for name, info in files.items()
        if not (assets / name).is_file()
        or (assets / name).stat().st_size != info.get("bytes")
        or file_sha(assets / name) != info.get("sha256")
    ]
    if bad:
        return [
            Check(
                "checksums",
                FAIL,
                f"differ from manifest.json: {', '.join(bad)}",
                "restore the files (git checkout assets/) or rebuild them with fmlab build-assets",
            )
        ]
    return [Check("checksums", OK, f"{len(files)} files match manifest.json"), _check_recommended(assets)]


def _check_recommended(assets: Path) -> Check:
    """The manifest's recommended training settings: known keys, sane ranges (what the CLI will use)."""
    try:
        shown = {command: recommended(assets, command) for command in ("train_adapter", "train_draft")}
    except FmlabError as err:
        return Check("recommended", FAIL, str(err), "fix manifest.json or rebuild with fmlab build-assets")
    if not any(shown.values()):
        return Check("recommended", OK, "none: the CLI uses Apple's defaults")
    return Check(
        "recommended",
        OK,
        "; ".join(f"{c}: " + ", ".join(f"{k} {v}" for k, v in values.items()) for c, values in shown.items()),
    )


# A conversation that touches every part of the template: tools, a tool call, a tool result, non-ASCII JSON.
TAMM_PROBE = [
    {"role": "user", "content": "Quel temps à Vérone?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "météo", "arguments": '{"ville": "Vérone"}'}}],
    },
    {"role": "tool", "content": {"ville": "Vérone", "ciel": "dégagé <b>&'"}},
    {"role": "assistant", "content": "Il fait beau."},
]
TAMM_PROBE_TOOLS = [{"type": "function", "function": {"name": "météo", "description": "Météo d'une ville"}}]


def check_against_tamm(assets: Path) -> list[Check]:
    """Opt-in (`fmlab doctor --against-tamm`): the assets through Apple's reference library tamm 0.1.0 and
    through fmlab, side by side: template ids and labels on a probe conversation, then fp32 logits of the
    base on that prompt. It loads the base twice (about 26 GB for Apple's 3B), so it is never on by default."""
    try:
        import tamm.utils.json as tamm_json
        from tamm.preprocessors.instruct_lm.afm.afm_v6 import AFMChatTemplateV6Preprocessor
        from tamm.tokenizers.afm import AFMTokenizer
    except ImportError:
        return [Check("tamm parity", WARN, "tamm is not installed", 'pip install "tamm==0.1.0"')]
    import torch

    from fmlab.checkpoints.assets import load_base
    from fmlab.data.chat_template import encode_chat

    fix = "report it with `fmlab info` output; until then trust tamm's numbers"
    tok = Tokenizer.from_file(assets / TOKENIZER)
    tamm_tok = AFMTokenizer(str(assets / TOKENIZER), extra_properties={"eot_id": tok.turn_end_id})
    expected = AFMChatTemplateV6Preprocessor(tamm_tok)(json.loads(json.dumps(TAMM_PROBE)), tools=TAMM_PROBE_TOOLS)
    ids, labels = encode_chat(tok, TAMM_PROBE, TAMM_PROBE_TOOLS)
    if (ids, labels) != (expected.input_ids, expected.label_ids):
        return [Check("tamm template", FAIL, "fmlab's template ids or labels differ from tamm's", fix)]
    rows = [Check("tamm template", OK, f"{len(ids)} ids and labels equal on a tool-calling probe")]
    reference = tamm_json.loads((assets / BASE_CONFIG).read_text()).create_model()
    reference.load_state_dict(load_torch(assets / BASE_WEIGHTS), strict=True)
    x = torch.tensor([ids])
    with torch.no_grad():
        diff = (reference.eval()(x).predictions.float() - load_base(assets).eval()(x)).abs().max()
    detail = f"fp32 logits: max difference {float(diff):.3g} over {len(ids)} tokens"
    if diff == 0:
        rows.append(Check("tamm logits", OK, detail + " (bit for bit)"))
    else:
        rows.append(Check("tamm logits", WARN if diff < 1e-3 else FAIL, detail, fix))
    return rows


def run_checks(
    assets: str | Path | None = None, out_dir: str | Path = "out", keep_best: int = 2, against_tamm: bool = False
) -> list[Check]:
    assets = assets_dir(assets, must_exist=False)
    checks = [check_python(), *(check_package(name) for name in PACKAGES), *check_devices()]
    checks += check_assets(assets)
    checks.append(check_disk(Path(out_dir).expanduser().resolve(), assets, keep_best))
    if against_tamm and not any(c.status == FAIL for c in checks):
        checks += check_against_tamm(assets)
    return checks


def table(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [
        f"{c.status:<5} {c.name:<{width}}  {c.detail}" + (f"\n{'':<{width + 8}}fix: {c.fix}" if c.fix else "")
        for c in checks
    ]
    counts = {s: sum(c.status == s for c in checks) for s in (OK, WARN, FAIL)}
    return "\n".join(lines) + f"\n\n{counts[OK]} ok, {counts[WARN]} warning(s), {counts[FAIL]} failure(s)"
