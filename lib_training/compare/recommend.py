"""Pick the best (file, weight): highest fidelity among the choices whose drift and diversity stay
within bounds; when none does, the one least far outside them, and say so.

Default bounds are rules of thumb for CLIP ViT-B/32 to ViT-L/14 embeddings of 512-1024 px images:
* `max_drift` 0.20 — a class image with a LoRA that leaves the class alone stays above ~0.8
  cosine of its base-model twin; at 0.3+ every "woman" starts to look like the subject.
* `min_diversity` 0.05 — base models give ~0.1-0.3 between seeds; below 0.05 the seeds give
  nearly one picture (the LoRA is overfitted or its weight too high).
* `min_alignment` off by default (CLIP scores depend on the model more than the other numbers).
A bound whose number was not measured (no class prompt: no drift; one seed: no diversity) is not
checked, and the reason says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SettingsError
from .metrics import GroupMetrics, MetricsReport


@dataclass(frozen=True)
class Bounds:
    max_drift: float | None = 0.20
    min_diversity: float | None = 0.05
    min_alignment: float | None = None

    def describe(self) -> str:
        parts = []
        if self.max_drift is not None:
            parts.append(f"drift <= {self.max_drift:.2f}")
        if self.min_diversity is not None:
            parts.append(f"diversity >= {self.min_diversity:.2f}")
        if self.min_alignment is not None:
            parts.append(f"alignment >= {self.min_alignment:.1f}")
        return ", ".join(parts) or "no bounds"


@dataclass(frozen=True)
class Recommendation:
    choice: GroupMetrics
    within_bounds: bool
    reason: str
    bounds: Bounds
    violations: tuple[str, ...] = ()  # e.g. "drift 0.31 > 0.20"
    unchecked: tuple[str, ...] = ()  # bounds that could not be checked, and why

    @property
    def numbers(self) -> dict[str, float | None]:
        return self.choice.numbers()

    def prompt_text(self, trigger_word: str = "") -> str:
        """What to send to txt2img: trigger word + `<lora:name:weight>`."""
        return ", ".join(p for p in (trigger_word.strip(), self.choice.prompt_tag) if p)


def recommend(report: MetricsReport, bounds: Bounds = Bounds()) -> Recommendation:
    candidates = [g for g in report.groups if g.file is not None and g.fidelity is not None]
    if not candidates:
        raise SettingsError("Nothing to recommend: no LoRA file was generated at a weight other than 0. "
                            "Add weights above 0 and run the comparison (to the end).")
    unchecked = _unchecked(candidates, bounds)
    scored = [(g, _violations(g, bounds)) for g in candidates]
    within = [g for g, v in scored if not v]
    base = report.base
    base_note = ""
    if base is not None and base.fidelity is not None:
        base_note = f" The base model alone scores fidelity {base.fidelity:.3f}."
    note = "".join(f" Not checked: {u}." for u in unchecked)
    if within:
        best = max(within, key=lambda g: (g.fidelity, -(g.drift or 0.0), -abs(g.weight)))
        reason = (f"{best.label}: the highest fidelity ({best.fidelity:.3f}) of the {len(within)} of "
                  f"{len(candidates)} choices within bounds ({bounds.describe()}); {_numbers(best)}."
                  f"{base_note}{note}")
        return Recommendation(best, True, reason, bounds, (), tuple(unchecked))
    least = min(scored, key=lambda gv: (_badness(gv[0], bounds), -gv[0].fidelity))
    best, violations = least
    reason = (f"No choice stays within bounds ({bounds.describe()}). Least far outside: {best.label} "
              f"({', '.join(violations)}); {_numbers(best)}. Try lower weights or earlier epochs, or loosen "
              f"the bounds.{base_note}{note}")
    return Recommendation(best, False, reason, bounds, tuple(violations), tuple(unchecked))


def _violations(g: GroupMetrics, b: Bounds) -> list[str]:
    out = []
    if b.max_drift is not None and g.drift is not None and g.drift > b.max_drift:
        out.append(f"drift {g.drift:.3f} > {b.max_drift:.2f}")
    if b.min_diversity is not None and g.diversity is not None and g.diversity < b.min_diversity:
        out.append(f"diversity {g.diversity:.3f} < {b.min_diversity:.2f}")
    if b.min_alignment is not None and g.alignment is not None and g.alignment < b.min_alignment:
        out.append(f"alignment {g.alignment:.1f} < {b.min_alignment:.1f}")
    return out


def _badness(g: GroupMetrics, b: Bounds) -> float:
    """Sum of how far each number is outside its bound, relative to the bound."""
    total = 0.0
    if b.max_drift is not None and g.drift is not None:
        total += max(0.0, g.drift - b.max_drift) / max(b.max_drift, 1e-6)
    if b.min_diversity is not None and g.diversity is not None:
        total += max(0.0, b.min_diversity - g.diversity) / max(b.min_diversity, 1e-6)
    if b.min_alignment is not None and g.alignment is not None:
        total += max(0.0, b.min_alignment - g.alignment) / max(b.min_alignment, 1e-6)
    return total


def _unchecked(groups: list[GroupMetrics], b: Bounds) -> list[str]:
    out = []
    if b.max_drift is not None and all(g.drift is None for g in groups):
        out.append("drift (no class prompt in the comparison)")
    if b.min_diversity is not None and all(g.diversity is None for g in groups):
        out.append("diversity (needs at least 2 seeds)")
    return out


def _numbers(g: GroupMetrics) -> str:
    def fmt(name: str, value: float | None, digits: int) -> str:
        return f"{name} {value:.{digits}f}" if value is not None else f"{name} n/a"

    return ", ".join([fmt("fidelity", g.fidelity, 3), fmt("alignment", g.alignment, 1),
                      fmt("drift", g.drift, 3), fmt("diversity", g.diversity, 3)])
