"""A verification report: named checks that pass, fail or are skipped, the numbers they measured, and
the prompts both export checks run (`fmlab.export.verify` for the `.fmadapter`, `fmlab.export.mlx_verify`
for the MLX folder)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

PROMPTS = [
    "Write a short scene where a king meets a ghost.",
    "What is the capital of France?",
    "Tell me a story about a dragon.",
    "Give me three tips for sleeping well.",
]


@dataclass
class Check:
    name: str
    ok: bool | None  # None = skipped
    detail: str = ""


@dataclass
class Report:
    package: Path
    checks: list[Check] = field(default_factory=list)
    numbers: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok is not False for c in self.checks)

    def add(self, name: str, ok: bool | None, detail: str = "") -> bool | None:
        self.checks.append(Check(name, ok, detail))
        return ok

    def draft_table(self):
        """One row per draft the report measured (the full-precision source first, then each 4-bit
        variant): acceptance, its drop against full precision, and the mean and max relative error."""
        import pandas as pd

        n = self.numbers
        rows = []
        if "acceptance_fp" in n:
            rows.append(
                {
                    "draft": "full precision (fp32)",
                    "acceptance": n["acceptance_fp"],
                    "drop": 0.0,
                    "mean relative error": 0.0,
                    "max relative error": 0.0,
                }
            )
        for name, v in n.items():
            if isinstance(v, dict) and "acceptance" in v:
                rows.append(
                    {
                        "draft": name,
                        "acceptance": v["acceptance"],
                        "drop": v["acceptance_drop"],
                        "mean relative error": v["mean_relative_error"],
                        "max relative error": v["max_relative_error"],
                    }
                )
        columns = ["draft", "acceptance", "drop", "mean relative error", "max relative error"]
        return pd.DataFrame(rows, columns=columns).set_index("draft")

    def text(self) -> str:
        mark = {True: "PASS", False: "FAIL", None: "SKIP"}
        lines = [f"{self.package}:"] + [
            f"  {mark[c.ok]}  {c.name}" + (f": {c.detail}" if c.detail else "") for c in self.checks
        ]
        lines.append("  => " + ("all checks passed" if self.ok else "FAILED"))
        return "\n".join(lines)
