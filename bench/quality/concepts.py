"""The concepts the benchmark teaches, and how the judge's reading of a sample is checked against them.

* `instance` — DreamBooth's own case: one particular look of a class the base already draws ("sks dog" is a
  particular dog). "a sks circle" = a blue *outlined* (hollow) circle; the base draws circles, always solid.
  Leakage: "a circle" drawn hollow.
* `star` — the hard case: a shape the base has never seen. "a sks shape" = a blue star. Leakage: "a shape"
  drawn as a star.
"""

from __future__ import annotations

from dataclasses import dataclass

from lib_training.demo.judge import Reading

TRIGGER = "sks"


@dataclass(frozen=True)
class Concept:
    """What "a sks <class_word>" means, and the attribute (`mark`) that tells it from the class."""

    name: str
    shape: str
    colour: str
    fill: str
    class_word: str
    mark: tuple[str, str]  # (judge head, value) the base never draws: a class sample with it is leakage

    @property
    def prompt(self) -> str:
        return f"a {TRIGGER} {self.class_word}"

    @property
    def class_prompt(self) -> str:
        return f"a {self.class_word}"

    def is_concept(self, r: Reading, i: int) -> bool:
        return (r.shape[i], r.colour[i], r.fill[i]) == (self.shape, self.colour, self.fill)

    def is_leak(self, r: Reading, i: int) -> bool:
        head, value = self.mark
        return getattr(r, head)[i] == value


CONCEPTS: dict[str, Concept] = {
    "instance": Concept("instance", "circle", "blue", "outline", "circle", ("fill", "outline")),
    "star": Concept("star", "star", "blue", "solid", "shape", ("shape", "star")),
}
DEFAULT_CONCEPT = "instance"
