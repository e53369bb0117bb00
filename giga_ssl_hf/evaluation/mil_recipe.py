"""The MIL baselines' names and training recipe, without torch: settings check it before any heavy import."""

from __future__ import annotations

from dataclasses import dataclass

MIL_BASELINES = ("abmil", "graph-mil")


@dataclass(frozen=True)
class MILRecipe:
    """Training recipe of a MIL baseline (CPU-friendly defaults: seconds per fit on 100 slides)."""

    epochs: int = 20
    slides_per_step: int = 4  # slides per optimiser step (1 is Ilse et al.'s; a few cut CPU time by ~3x)
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    dropout: float = 0.25
    hidden_dim: int = 64
    attention_dim: int = 32
    validation_fraction: float = 0.0  # > 0: early stopping on this stratified share of the training slides
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self):
        if min(self.epochs, self.slides_per_step, self.hidden_dim, self.attention_dim) < 1:
            raise ValueError(
                "the MIL epochs (--mil-epochs), slides_per_step, hidden_dim and attention_dim must be positive"
            )
        if not 0 <= self.dropout < 1 or not 0 <= self.validation_fraction < 1:
            raise ValueError("the MIL dropout and held-out share (--mil-validation) must be in [0, 1)")
        if not self.learning_rate > 0 or self.weight_decay < 0:
            raise ValueError("MIL learning_rate must be positive and weight_decay not negative")
