"""The mix of ``data.tasks`` each RL iteration draws from, and the per-task numbers it logs.

``data.curriculum: fixed`` keeps the tasks' weights. ``ucb`` is DUMP, "Automated
Distribution-Level Curriculum Learning for RL-based LLM Post-training" (Wang et al.
2025, arXiv 2504.09710), section 3: each task is a bandit arm whose learnability is the
expected absolute advantage of its recent samples (the mean |A| over the last
``data.ucb.window`` samples of that task), and the arm's upper confidence bound is

    score_j = mean|A|_j + c * sqrt(2 ln N / n_j)

with n_j the samples of task j observed so far (those of groups with an advantage) and
N those of all tasks. The next
iteration's mix is softmax(score / temperature) over tasks (the paper samples
distributions from this softmax), floored at ``min_weight`` and renormalised. A task
never drawn scores +inf: the tasks never drawn share the whole mix until each has been
seen. Before any sample, the mix is the tasks' configured weights. The form
sqrt(ln N / n_j) of other write-ups is c / sqrt(2) here.

The advantage is the run's ``grpo.advantage`` on each prompt's scores (for online DPO
too); a group with a missing score is left out. Under torchrun the per-task sums are
added over ranks, so every rank holds the same state. The state (counts and windows)
is plain numbers and lists, saved in each checkpoint's trainer state, so a resumed run
draws exactly the mixes the uninterrupted run draws.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from posttrain.config import Config
from posttrain.config.sections import UCBConfig
from posttrain.records import ScoredGroups
from posttrain.tasks.multi import MultiScorer, MultiTask

AllSum = Callable[[Sequence[float]], list[float]]


def ucb_scores(means: Sequence[float], counts: Sequence[float], c: float) -> list[float]:
    """DUMP's UCB per arm: mean|A| + c sqrt(2 ln N / n); +inf for an arm never drawn."""
    total = sum(counts)
    return [
        math.inf if n <= 0 else m + c * math.sqrt(2.0 * math.log(total) / n) if total > 1 else m
        for m, n in zip(means, counts)
    ]


def softmax_mix(scores: Sequence[float], temperature: float, min_weight: float = 0.0) -> list[float]:
    """softmax(score / temperature), the arms at +inf sharing everything, floored at ``min_weight``."""
    top = [s == math.inf for s in scores]
    if any(top):
        p = [float(t) / sum(top) for t in top]
    else:
        m = max(scores)
        e = [math.exp((s - m) / temperature) for s in scores]
        p = [x / sum(e) for x in e]
    if min_weight > 0:
        p = [max(x, min_weight) for x in p]
        p = [x / sum(p) for x in p]
    return p


class Curriculum:
    """The tasks' mix: fixed weights, or DUMP's UCB over windows of recent |advantages|."""

    def __init__(self, names: list[str], weights: list[float], mode: str, ucb: UCBConfig) -> None:
        self.names, self.base, self.mode, self.ucb = list(names), list(weights), mode, ucb
        self.counts = [0.0] * len(names)  # n_j: samples of each task observed so far
        self.windows: list[list[list[float]]] = [[] for _ in names]  # per task: [sum |A|, samples] per iteration

    def learnability(self) -> list[float]:
        """Mean |A| over each task's window (0 before any sample)."""
        out = []
        for w in self.windows:
            n = sum(c for _, c in w)
            out.append(sum(s for s, _ in w) / n if n else 0.0)
        return out

    def scores(self) -> list[float]:
        return ucb_scores(self.learnability(), self.counts, self.ucb.c)

    def mix(self) -> dict[str, float]:
        """The weights the next iteration draws its prompts by."""
        if self.mode == "fixed" or not any(self.counts):
            total = sum(self.base)
            return {t: w / total for t, w in zip(self.names, self.base)}
        p = softmax_mix(self.scores(), self.ucb.temperature, self.ucb.min_weight)
        return dict(zip(self.names, p))

    def observe(self, abs_sums: Sequence[float], samples: Sequence[float]) -> None:
        """One iteration's per-task sum of |A| and sample count (over all ranks) enter the windows."""
        for j, (s, n) in enumerate(zip(abs_sums, samples)):
            if n <= 0:
                continue
            self.counts[j] += n
            w = self.windows[j]
            w.append([float(s), float(n)])
            while len(w) > 1 and sum(c for _, c in w) - w[0][1] >= self.ucb.window:
                w.pop(0)  # the oldest iteration leaves once the rest still fills the window

    def state(self) -> dict[str, Any]:
        """Plain numbers and lists: checkpoints load with weights_only=True."""
        return {
            "names": list(self.names),
            "counts": list(self.counts),
            "windows": [list(map(list, w)) for w in self.windows],
        }

    def load(self, state: dict[str, Any]) -> None:
        if list(state.get("names", [])) != self.names:
            raise ValueError(f"the checkpoint's curriculum is over tasks {state.get('names')}, this run's {self.names}")
        self.counts = [float(x) for x in state["counts"]]
        self.windows = [[[float(a), float(b)] for a, b in w] for w in state["windows"]]


class TaskMix:
    """The loop's view of a multi-task run: sets each iteration's mix, logs per-task numbers, checkpoints state."""

    key = "curriculum"  # its entry in the checkpoint's trainer state

    def __init__(self, cfg: Config, task: MultiTask, extra: dict[str, Any]) -> None:
        d = cfg.data
        self.task, self.advantage = task, cfg.grpo.advantage
        self.curriculum = Curriculum([t.name for t in d.tasks], [t.weight for t in d.tasks], d.curriculum, d.ucb)
        if self.key in extra:
            self.curriculum.load(extra[self.key])
        self.task.weights = self.curriculum.mix()

    def checkpoint(self) -> dict[str, Any]:
        return {self.key: self.curriculum.state()}

    def observe(self, groups: ScoredGroups, scorer: Any, all_sum: AllSum) -> dict[str, Any]:
        """Per-task metrics of this iteration (all ranks), then the next iteration's mix."""
        stats = task_stats(self.task, groups, scorer, self.advantage)
        names = self.curriculum.names
        flat = all_sum([x for t in names for x in stats[t]])
        per = {t: flat[7 * j : 7 * j + 7] for j, t in enumerate(names)}
        out: dict[str, Any] = {}
        for t in names:
            prompts, n, total, acc_sum, acc_n, _, _ = per[t]
            out[f"task/{t}/weight"] = self.task.weights[t]  # the mix this iteration was drawn by
            out[f"task/{t}/prompts"] = int(prompts)
            out[f"task/{t}/reward"] = total / n if n else math.nan
            if isinstance(scorer, MultiScorer) and scorer.accuracy.get(t) is not None:
                out[f"task/{t}/accuracy"] = acc_sum / acc_n if acc_n else math.nan
        self.curriculum.observe([per[t][5] for t in names], [per[t][6] for t in names])
        if self.curriculum.mode == "ucb":
            for t, m, s in zip(names, self.curriculum.learnability(), self.curriculum.scores()):
                out[f"task/{t}/learnability"], out[f"task/{t}/ucb"] = m, s
        self.task.weights = self.curriculum.mix()
        return out


def task_stats(task: MultiTask, groups: ScoredGroups, scorer: Any, advantage: str) -> dict[str, list[float]]:
    """Per task, this rank's [prompts, scored samples, reward sum, accuracy sum, accuracy count, sum |A|, samples with A]."""
    from posttrain.algorithms.advantages import ADVANTAGES

    stats = {t: [0.0] * 7 for t in task.tasks}
    G = groups.group_size
    scores = groups.scores
    whole = ~scores.isnan().any(dim=1)  # groups with every score: the ones an advantage exists for
    adv = torch.zeros_like(scores)
    if bool(whole.any()):
        adv[whole] = ADVANTAGES[advantage](scores[whole])
    components = groups.report.components if groups.report is not None else {}
    for p, ex in enumerate(groups.examples):
        t = task.task_of(ex)
        s = stats[t]
        s[0] += 1
        row = scores[p]
        ok = ~row.isnan()
        s[1] += float(ok.sum())
        s[2] += float(row[ok].sum())
        name = scorer.accuracy.get(t) if isinstance(scorer, MultiScorer) else None
        if name is not None:
            values = components.get(f"{t}/{name}", [])
            got = [v for v in values[p * G : (p + 1) * G] if v is not None]
            s[3] += sum(got)
            s[4] += len(got)
        if bool(whole[p]):  # a group with a missing score has no advantage: it adds nothing to the window
            s[5] += float(adv[p].abs().sum())
            s[6] += G
    return stats
