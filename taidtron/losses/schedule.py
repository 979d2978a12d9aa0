"""The adaptive interpolation schedule of TAID (the official SakanaAI/TAID rule, restated in docs/taid.md)."""

from __future__ import annotations

import math
import operator


class TAIDSchedule:
    """Interpolation parameter t of TAID, moved once per optimizer step from the global distillation loss.

    Adaptive rule, per `update(loss, step, total_steps)`:

        first update:  prev_loss = loss; t stays t_start
        delta     = (prev_loss - loss) / (prev_loss + 1e-15)
        m         = beta * m + (1 - beta) * delta
        dt        = alpha * sigmoid(m) * (1 - t)
        t_lin     = t_start + (t_end - t_start) * step / total_steps
        t         = min(t_end, max(t_lin, t + dt))
        prev_loss = loss

    With adaptive=False, t = t_lin at every update. `t`, `m` and `prev_loss` are the checkpointed state.
    Call it with the global-batch token-mean loss (identical on every rank), never on validation batches. `step` is
    the number of optimizer steps done before the one whose loss is passed (0 for the first), as the official code's
    `trainer.global_step` during that step.
    """

    def __init__(
        self, t_start: float = 0.4, t_end: float = 1.0, alpha: float = 5e-4, beta: float = 0.99, adaptive: bool = True
    ) -> None:
        if not 0.0 <= t_start <= t_end <= 1.0:
            raise ValueError(f"need 0 <= t_start ({t_start}) <= t_end ({t_end}) <= 1; lower t_start or raise t_end.")
        if not alpha >= 0.0:
            raise ValueError(f"alpha={alpha} must be >= 0 (it scales the adaptive step; 0 gives the linear floor).")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta={beta} must be in [0, 1) (momentum of the relative loss change).")
        self.t_start, self.t_end, self.alpha, self.beta = float(t_start), float(t_end), float(alpha), float(beta)
        self.adaptive = bool(adaptive)
        self.t = self.t_start
        self.m = 0.0
        self.prev_loss: float | None = None

    def linear(self, step: int, total_steps: int) -> float:
        """The linear floor t_lin at `step` of `total_steps`."""
        return self.t_start + (self.t_end - self.t_start) * step / total_steps

    def update(self, loss: float, step: int, total_steps: int) -> float:
        """Move t given the loss of the optimizer step that follows `step` completed ones (0 <= step <= total_steps);
        return the new t."""
        loss = float(loss)
        if not math.isfinite(loss):
            raise ValueError(f"loss={loss} is not finite; skip the t update for this step.")
        total_steps, step = _as_int(total_steps, "total_steps"), _as_int(step, "step")
        if total_steps < 1:
            raise ValueError(f"total_steps={total_steps} must be >= 1.")
        if not 0 <= step <= total_steps:
            raise ValueError(f"step={step} must be in [0, total_steps={total_steps}].")
        t_lin = self.linear(step, total_steps)
        if not self.adaptive:
            self.t = t_lin
            self.prev_loss = loss
            return self.t
        if self.prev_loss is None:
            self.prev_loss = loss
            return self.t
        delta = (self.prev_loss - loss) / (self.prev_loss + 1e-15)
        self.m = self.beta * self.m + (1.0 - self.beta) * delta
        dt = self.alpha * _sigmoid(self.m) * (1.0 - self.t)
        self.t = min(self.t_end, max(t_lin, self.t + dt))
        self.prev_loss = loss
        return self.t

    def state_dict(self) -> dict:
        return {"t": self.t, "m": self.m, "prev_loss": self.prev_loss}

    def load_state_dict(self, state: dict) -> None:
        missing = {"t", "m", "prev_loss"} - set(state)
        if missing:
            raise ValueError(f"TAIDSchedule state is missing {sorted(missing)}; expected keys t, m, prev_loss.")
        self.t = float(state["t"])
        self.m = float(state["m"])
        self.prev_loss = None if state["prev_loss"] is None else float(state["prev_loss"])

    def __repr__(self) -> str:
        return (
            f"TAIDSchedule(t={self.t:.6f}, m={self.m:.3e}, prev_loss={self.prev_loss}, t_start={self.t_start}, "
            f"t_end={self.t_end}, alpha={self.alpha}, beta={self.beta}, adaptive={self.adaptive})"
        )


def _sigmoid(x: float) -> float:
    # Stable for large |x| (m is a momentum of relative changes, normally tiny, but never overflow).
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _as_int(value, name: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name}={value!r} must be an int.") from None
