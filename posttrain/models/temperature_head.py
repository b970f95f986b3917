"""The temperature head of Adaptive Decoding (Dhuliawala et al. 2024, arXiv 2411.09661).

"Adaptive Decoding via Latent Preference Optimization" adds a small learned layer,
the AdaptiveDecoder, on the language model's last hidden state (after the final
norm: the state ``lm_head`` reads). It gives a distribution over K temperatures;
a temperature is picked and the next token is sampled at it (temperature 0:
greedy). Two granularities, as in the paper's Figure 1:

- ``level: token`` (AdaptiveDecoder_tok): at every decode step, from the hidden
  state that gives that step's logits, so a response can mix greedy and creative
  tokens;
- ``level: example`` (AdaptiveDecoder_seq): once per response, from the prompt's
  last hidden state, for all of its tokens.

The pick is drawn from the head's distribution (the paper's Eq. 5, what training
needs: the samples of one prompt must try different temperatures) or its argmax
(Eq. 4; the paper's Table 5 finds the two about equal at test time).

The language model stays frozen; only this head trains (``posttrain.algorithms.lpo``).
Its output layer starts at zero, so every temperature starts equally likely.

On disk the head sits beside the model it reads: ``temperature_head.safetensors``
(weights) and ``temperature_head.json`` (its settings) in the model's directory.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file

from posttrain.errors import ModelError

HEAD_WEIGHTS = "temperature_head.safetensors"
HEAD_SETTINGS = "temperature_head.json"
Level = Literal["token", "example"]


@dataclass(frozen=True)
class HeadSettings:
    """What a head is: its temperatures, its granularity, and the widths it was built with."""

    temperatures: tuple[float, ...]
    level: Level
    hidden_size: int  # the language model's hidden size, the head's input
    width: int = 64  # the head's hidden layer; 0: a single linear layer

    def check(self, where: str = "adaptive") -> None:
        if len(self.temperatures) < 2:
            raise ModelError("a temperature head needs at least two temperatures to choose from", field=where)
        if any(not math.isfinite(t) or t < 0 for t in self.temperatures):
            raise ModelError(f"temperatures must be finite and >= 0, got {list(self.temperatures)}", field=where)
        if len(set(self.temperatures)) != len(self.temperatures):
            raise ModelError(f"temperatures must differ, got {list(self.temperatures)}", field=where)
        if self.level not in ("token", "example"):
            raise ModelError(f"level must be token or example, got {self.level!r}", field=where)


class TemperatureHead(torch.nn.Module):
    """hidden (..., H) -> logits (..., K) over ``settings.temperatures``."""

    values: torch.Tensor  # (K,) the temperatures, a buffer that follows the head's device

    def __init__(self, settings: HeadSettings) -> None:
        super().__init__()
        settings.check()
        self.settings = settings
        K, H, W = len(settings.temperatures), settings.hidden_size, settings.width
        layers: list[torch.nn.Module] = [torch.nn.Linear(H, W), torch.nn.Tanh()] if W else []
        self.net = torch.nn.Sequential(*layers, torch.nn.Linear(W or H, K))
        torch.nn.init.zeros_(self.out.weight)  # uniform over the temperatures at the start
        torch.nn.init.zeros_(self.out.bias)
        self.register_buffer("values", torch.tensor(settings.temperatures, dtype=torch.float32), persistent=False)

    @property
    def out(self) -> torch.nn.Linear:
        """The output layer: hidden width -> one logit per temperature."""
        layer = self.net[-1]
        assert isinstance(layer, torch.nn.Linear)
        return layer

    @property
    def level(self) -> Level:
        return self.settings.level

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.net(hidden.to(self.out.weight.dtype))

    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (..., K) log-probabilities of the temperatures, in float32."""
        return self(hidden).float().log_softmax(-1)

    @torch.no_grad()
    def choose(self, hidden: torch.Tensor, greedy: bool, gen: torch.Generator | None) -> torch.Tensor:
        """hidden (B, H) -> (B,) indices into the temperatures: the argmax, or a draw with ``gen``."""
        logits = self(hidden).float()
        if greedy:
            return logits.argmax(-1)
        return torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(-1)

    def temperatures_of(self, choices: torch.Tensor) -> torch.Tensor:
        """(B,) indices -> (B,) temperatures."""
        return self.values.to(choices.device)[choices]


def new_head(
    temperatures: Sequence[float], level: Level, hidden_size: int, width: int = 64, seed: int = 0
) -> TemperatureHead:
    """A fresh head (uniform over ``temperatures``); its hidden layer's initialisation is fixed by ``seed``."""
    settings = HeadSettings(tuple(float(t) for t in temperatures), level, hidden_size, width)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TemperatureHead(settings)


def has_head(model_dir: str | Path) -> bool:
    return (Path(model_dir) / HEAD_WEIGHTS).is_file()


def save_head(head: TemperatureHead, model_dir: str | Path) -> Path:
    """Write the head beside the model in ``model_dir``; returns the weights' path."""
    d = Path(model_dir)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    save_file(state, str(d / HEAD_WEIGHTS))
    settings: dict[str, Any] = asdict(head.settings)
    settings["temperatures"] = list(head.settings.temperatures)
    (d / HEAD_SETTINGS).write_text(json.dumps(settings, indent=2) + "\n")
    return d / HEAD_WEIGHTS


def load_head(model_dir: str | Path, device: str | torch.device = "cpu") -> TemperatureHead | None:
    """The head saved beside the model in ``model_dir``, or None when there is none.

    A settings file that is not JSON, lacks a field, or does not fit the weights is a
    one-line ``ModelError`` naming the file.
    """
    d = Path(model_dir)
    if not has_head(d):
        return None
    settings_file = d / HEAD_SETTINGS
    try:
        raw = json.loads(settings_file.read_text())
        settings = HeadSettings(
            temperatures=tuple(float(t) for t in raw["temperatures"]),
            level=raw["level"],
            hidden_size=int(raw["hidden_size"]),
            width=int(raw.get("width", 0)),
        )
    except FileNotFoundError:
        raise ModelError(f"{HEAD_WEIGHTS} is there but its settings are not", file=str(settings_file)) from None
    except json.JSONDecodeError as e:
        raise ModelError(f"not valid JSON: {e.msg}", file=str(settings_file), line=e.lineno) from None
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(
            f"not a temperature head's settings ({type(e).__name__}: {e})", file=str(settings_file)
        ) from None
    head = TemperatureHead(settings)
    try:
        head.load_state_dict(load_file(str(d / HEAD_WEIGHTS)))
    except RuntimeError as e:
        message = str(e).splitlines()[0]
        raise ModelError(f"the weights do not fit the settings: {message}", file=str(d / HEAD_WEIGHTS)) from None
    return head.to(device)


def model_hidden_size(model: Any) -> int:
    """The hidden size of a Hugging Face causal LM's last hidden state."""
    cfg = model.config
    size = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None) or getattr(cfg, "d_model", None)
    if not size:
        raise ModelError(f"cannot read the hidden size of {type(model).__name__}'s config")
    return int(size)
