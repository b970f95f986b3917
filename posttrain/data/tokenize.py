"""Prompts and demonstrations to token ids, with the chat template when data has messages.

For message-shaped data the completion's tokens are found by rendering the
conversation twice, without and with the final assistant turn, and taking the
difference. This works with any chat template, including those without
``{% generation %}`` tags (whose assistant-only masks come back all zeros in
other frameworks), and fails loudly when a template rewrites earlier turns.

A multi-turn demonstration whose earlier assistant turns are targets too
(``Example.train_prompt_replies``, from ``data.train_on: all_assistant``) is
encoded by ``encode_demo`` the same way, one turn at a time: ids plus a weight
per completion token, 1 on every assistant turn (and its end-of-turn tokens), 0
on the user turns between them. Its last turn is encoded exactly as
``encode_example`` encodes it, so the final reply's tokens are the same either way.

A ``{text}`` row (``Example.prompt == ""``) is plain language modelling: every
token is a target but the first, which is the beginning-of-sequence token when
the tokenizer has one.

Whether a string prompt goes through the chat template is the task's business
(``posttrain.tasks.prompting`` turns it into a user turn); ``chat_enabled`` is
the rule ``data.chat_template`` follows.

A row longer than its limit (``train.max_seq_len``, capped by the model's context:
``Limit``) is cut or dropped by ``fit_demo`` / ``fit_pair`` as ``data.truncation``
says, and counted (``LengthCount``) for the stage's summary line; a prompt with no
room for ``max_new_tokens`` is an error or skipped (``fit_prompts``). Rows that fit
are returned as they are, so nothing changes when none is too long.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from posttrain.data.pairs import EncodedPair
from posttrain.errors import ConfigError, DataError
from posttrain.models.tiny import CHAT_TEMPLATE as TINY_CHAT_TEMPLATE
from posttrain.tasks.base import Example, Message, Prompt

ChatMode = Literal["auto", "on", "off"]
Truncation = Literal["error", "left", "right", "drop"]  # data.truncation: what happens to an over-long row
# (prompt ids, completion ids, loss weight of each completion token)
Demo = tuple[list[int], list[int], list[float]]


def has_chat_template(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` brings a chat template of its own, i.e. belongs to a chat model.

    The built-in tiny tokenizer's minimal template does not count: it exists so that
    message rows can be read, and the tiny model is a base model trained on raw text.
    """
    template = getattr(tokenizer, "chat_template", None)
    return bool(template) and template != TINY_CHAT_TEMPLATE


def chat_enabled(tokenizer: Any, mode: ChatMode) -> bool:
    """Whether string prompts become chat turns under ``data.chat_template: mode``.

    ``auto`` without a tokenizer to look at is off, today's raw prompts.
    """
    if mode == "off":
        return False
    if mode == "on":
        if tokenizer is not None and not getattr(tokenizer, "chat_template", None):
            raise ConfigError("is on, but the tokenizer has no chat template", field="data.chat_template")
        return True
    return tokenizer is not None and has_chat_template(tokenizer)


def _split_source(ex: Example) -> tuple[str | None, int | None]:
    if not ex.source:
        return None, None
    file, _, line = ex.source.rpartition(":")
    return (file, int(line)) if line.isdigit() else (ex.source, None)


def example_error(ex: Example, field: str, message: str) -> DataError:
    file, line = _split_source(ex)
    return DataError(message, file=file or f"example {ex.id}", line=line, field=field)


def _chat_ids(tokenizer: PreTrainedTokenizerBase, messages: list[Message], generation: bool) -> list[int]:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=generation, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> list[int]:
    if isinstance(prompt, str):
        return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    return _chat_ids(tokenizer, prompt, generation=True)


def _encode_text(tokenizer: PreTrainedTokenizerBase, ex: Example, text: str) -> tuple[list[int], list[int]]:
    """A ``{text}`` row: the first token is context (bos when there is one), every later one a target."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids = [int(bos), *ids]
    if len(ids) < 2:
        raise example_error(ex, "text", "the text is too short to train on: it needs two tokens or more")
    return ids[:1], ids[1:]


def _encode_whole(tokenizer: PreTrainedTokenizerBase, ex: Example) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids ending in eos) of a demonstration, however long."""
    if ex.completion is None:
        raise example_error(ex, "completion", "this row has no demonstration to train on")
    eos = tokenizer.eos_token_id
    if ex.prompt == "":
        prompt, completion = _encode_text(tokenizer, ex, ex.completion)
    elif isinstance(ex.prompt, str):
        prompt = encode_prompt(tokenizer, ex.prompt)
        completion = list(tokenizer(ex.completion, add_special_tokens=False)["input_ids"])
    else:
        prompt = encode_prompt(tokenizer, ex.prompt)
        messages = list(ex.prompt) + [{"role": "assistant", "content": ex.completion}]
        full = _chat_ids(tokenizer, messages, generation=False)
        if full[: len(prompt)] != prompt:
            raise example_error(
                ex, "messages", "the chat template renders earlier turns differently once the reply is added"
            )
        completion = full[len(prompt) :]
    if eos is not None and eos not in completion:
        completion.append(int(eos))
    return prompt, completion


def encode_example(
    tokenizer: PreTrainedTokenizerBase, ex: Example, max_len: int | Limit | None
) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids ending in eos) of a demonstration; ``TooLong`` when over ``max_len``."""
    prompt, completion = _encode_whole(tokenizer, ex)
    check_length(ex, len(prompt), len(completion), max_len)
    return prompt, completion


def _reply_spans(tokenizer: PreTrainedTokenizerBase, ex: Example, full: list[int]) -> list[tuple[int, int]]:
    """[start, end) in ``full`` of each assistant turn inside ``ex.prompt`` that has context before it."""
    assert isinstance(ex.prompt, list)
    spans = []
    for i, message in enumerate(ex.prompt):
        if i == 0 or message["role"] != "assistant":
            continue
        start = _chat_ids(tokenizer, ex.prompt[:i], generation=True)
        end = _chat_ids(tokenizer, ex.prompt[: i + 1], generation=False)
        if full[: len(start)] != start or full[: len(end)] != end:
            raise example_error(
                ex,
                "messages",
                f"the chat template renders turn {i} differently once later turns are added, so its tokens "
                "cannot be told apart: train on the last reply only (data.train_on: last_assistant)",
            )
        spans.append((len(start), len(end)))
    return spans


def encode_demo(tokenizer: PreTrainedTokenizerBase, ex: Example, max_len: int | Limit | None) -> Demo:
    """(prompt ids, completion ids, per-token loss weights) of a demonstration, every reply a target.

    Without earlier replies to train (``ex.train_prompt_replies`` false, or none in the
    prompt) this is ``encode_example`` with every weight 1. Otherwise the completion
    starts at the first trained reply; the weights are 1 on each assistant turn and on
    the final reply, 0 on the turns between them. Over ``max_len`` it raises ``TooLong``;
    ``fit_demo`` (with ``max_len=None`` here) cuts or drops instead, per ``data.truncation``.
    """
    prompt, completion = _encode_whole(tokenizer, ex)
    check_length(ex, len(prompt), len(completion), max_len)
    if not (ex.train_prompt_replies and isinstance(ex.prompt, list)):
        return prompt, completion, [1.0] * len(completion)
    full = prompt + completion
    spans = _reply_spans(tokenizer, ex, full)
    if not spans:
        return prompt, completion, [1.0] * len(completion)
    first = spans[0][0]
    weights = [0.0] * (len(full) - first)
    for start, end in [*spans, (len(prompt), len(full))]:
        weights[start - first : end - first] = [1.0] * (end - start)
    return full[:first], full[first:], weights


# --- rows longer than they may be: data.truncation ----------------------------------------


class TooLong(DataError):
    """A row (or prompt) longer than its limit: the error of ``data.truncation: error``, skipped by ``drop``."""


@dataclass(frozen=True)
class Limit:
    """The most tokens a training row may have, and which setting sets it.

    ``seq_len`` is ``train.max_seq_len`` (None where no training length applies);
    ``context`` the model's own context (``max_position_embeddings``; None when unknown).
    The smaller one applies; messages name it and show the other, so a user can tell
    whether to raise ``train.max_seq_len`` or pick a model with a longer context.
    """

    seq_len: int | None = None
    context: int | None = None

    @classmethod
    def of(cls, seq_len: int, max_len: int | None, context: int | None = None) -> Limit:
        """From a stage's ``max_len``, ``train.max_seq_len`` capped by the model's ``context``: ``tokens == max_len``.

        Below ``seq_len`` the cap is the context's, which ``max_len`` then is.
        """
        if max_len is None:
            return cls(seq_len, context)
        if max_len < seq_len:
            return cls(seq_len, max_len)
        return cls(max_len, context)

    @property
    def tokens(self) -> int | None:
        known = [n for n in (self.seq_len, self.context) if n is not None]
        return min(known) if known else None

    @property
    def by_context(self) -> bool:
        """Whether the model's context, not ``train.max_seq_len``, is the limit that applies."""
        return self.context is not None and (self.seq_len is None or self.context < self.seq_len)

    def name(self) -> str:
        """The limit that applies, for a summary: ``train.max_seq_len=128`` or ``the model's context of 64``."""
        return f"the model's context of {self.context}" if self.by_context else f"train.max_seq_len={self.seq_len}"

    def describe(self) -> str:
        """The limit that applies and the other one, for an error."""
        if self.by_context:
            other = f" (train.max_seq_len is {self.seq_len})" if self.seq_len is not None else ""
        else:
            other = f" (the model's context is {self.context})" if self.context is not None else ""
        return self.name() + other


def _too_long(ex: Example, field: str, message: str) -> TooLong:
    file, line = _split_source(ex)
    return TooLong(message, file=file or f"example {ex.id}", line=line, field=field)


def _limit(max_len: int | Limit | None) -> Limit | None:
    return Limit(context=max_len) if isinstance(max_len, int) else max_len


def check_length(
    ex: Example, prompt_len: int, completion_len: int, max_len: int | Limit | None, what: str = "completion"
) -> None:
    """Raise ``TooLong`` when the prompt leaves no room, or prompt + ``what`` exceeds the limit.

    A plain ``int`` limit is the model's context (today's messages); a ``Limit`` names
    ``train.max_seq_len`` and the context separately and says how to keep going.
    """
    limit = _limit(max_len)
    n = None if limit is None else limit.tokens
    if limit is None or n is None or (prompt_len < n and prompt_len + completion_len <= n):
        return
    legacy = isinstance(max_len, int)
    hint = "" if legacy else "; data.truncation: left, right or drop keeps going without it"
    if prompt_len >= n:
        bound = f"the model's context of {n}" if legacy else limit.describe()
        relation = "longer than" if prompt_len > n else "as long as"
        raise _too_long(ex, "prompt", f"prompt is {prompt_len} tokens, {relation} {bound}{hint}")
    bound = f"the context of {n}" if legacy else limit.describe()
    total = prompt_len + completion_len
    raise _too_long(ex, what, f"prompt + {what} is {total} tokens, longer than {bound}{hint}")


def _cut_start(prompt: list[int], keep: int, bos: int | None) -> list[int]:
    """The last ``keep`` (>= 1) tokens of ``prompt``; a leading beginning-of-sequence token stays first."""
    if bos is not None and prompt and prompt[0] == bos:
        return [prompt[0], *prompt[len(prompt) - keep + 1 :]]
    return prompt[len(prompt) - keep :]


def fit_demo(
    ex: Example, demo: Demo, max_len: int | Limit | None, truncation: Truncation = "error", bos: int | None = None
) -> Demo | None:
    """``demo`` within ``max_len`` as ``data.truncation`` says: itself when it fits, else

    - ``error``: ``TooLong``, naming the limit that applies;
    - ``left``: tokens dropped from the prompt's start (after a leading ``bos``, which
      stays), the completion kept whole; None when the completion alone leaves no room for
      one prompt token. With ``data.train_on: all_assistant`` the completion starts at the
      first trained reply, so a long conversation is dropped rather than cut;
    - ``right``: the completion's end cut off, so it loses its eos (the model is not taught
      to stop there); None when the prompt alone leaves no room;
    - ``drop``: None.
    """
    prompt, completion, weights = demo
    limit = _limit(max_len)
    n = None if limit is None else limit.tokens
    if n is None or (len(prompt) < n and len(prompt) + len(completion) <= n):
        return demo
    if truncation == "error":
        check_length(ex, len(prompt), len(completion), max_len)
    if truncation == "left" and len(completion) < n:
        return _cut_start(prompt, n - len(completion), bos), completion, weights
    if truncation == "right" and len(prompt) < n:
        room = n - len(prompt)
        return prompt, completion[:room], weights[:room]
    return None


def fit_pair(
    ex: Example,
    pair: EncodedPair,
    max_len: int | Limit | None,
    truncation: Truncation = "error",
    bos: int | None = None,
) -> EncodedPair | None:
    """A preference pair within ``max_len``, as ``fit_demo`` fits a demonstration.

    The prompt is shared, so ``left`` cuts it to leave room for the longer reply and
    ``right`` cuts each reply that does not fit (both lose their eos; two replies that
    differ only past the cut become equal and teach nothing). ``error`` names the
    reply that does not fit, chosen first.
    """
    prompt, chosen, rejected = pair
    limit = _limit(max_len)
    n = None if limit is None else limit.tokens
    longest = max(len(chosen), len(rejected))
    if n is None or (len(prompt) < n and len(prompt) + longest <= n):
        return pair
    if truncation == "error":
        check_length(ex, len(prompt), len(chosen), max_len, "chosen")
        check_length(ex, len(prompt), len(rejected), max_len, "rejected")
    if truncation == "left" and longest < n:
        return _cut_start(prompt, n - longest, bos), chosen, rejected
    if truncation == "right" and len(prompt) < n:
        room = n - len(prompt)
        return prompt, chosen[:room], rejected[:room]
    return None


@dataclass
class LengthCount:
    """How many rows ``data.truncation`` cut or dropped, for a stage's summary line."""

    truncation: Truncation = "drop"
    limit: Limit | None = None  # None: no limit, nothing to count
    rows: int = 0
    cut: int = 0
    dropped: int = 0

    def add(self, before: Any, after: Any) -> None:
        """One row, ``before`` fitting and ``after`` (None: dropped)."""
        self.rows += 1
        if after is None:
            self.dropped += 1
        elif after is not before:
            self.cut += 1

    def summary(self, what: str) -> str:
        """E.g. "dropped 3 of 200 demonstrations longer than train.max_seq_len=128"; "" when none was long."""
        if not (self.cut or self.dropped) or self.limit is None:
            return ""
        limit = self.limit.name()
        parts = []
        if self.cut:
            end = "prompt's start" if self.truncation == "left" else "completion's end"
            parts.append(f"cut the {end} of {self.cut} of {self.rows} {what} longer than {limit}")
        if self.dropped:
            why = "" if self.truncation == "drop" else " (too long to cut)"
            parts.append(f"dropped {self.dropped} of {self.rows} {what} longer than {limit}{why}")
        return "; ".join(parts)


def prompt_error(ex: Example, prompt_len: int, max_new_tokens: int, context: int, setting: str) -> TooLong:
    """A prompt with no room for ``max_new_tokens`` (``setting`` names it) within the model's ``context``."""
    total = prompt_len + max_new_tokens
    message = (
        f"prompt is {prompt_len} tokens; with {setting}={max_new_tokens} that is {total}, longer than the model's "
        f"context of {context}; data.truncation: drop skips such prompts"
    )
    return _too_long(ex, "prompt", message)


def fit_prompts(
    examples: list[Example],
    prompts: list[list[int]],
    max_new_tokens: int,
    context: int | None,
    truncation: Truncation,
    setting: str = "sampling.max_new_tokens",
) -> tuple[list[Example], list[list[int]], int]:
    """The (examples, prompts) that leave room for ``max_new_tokens`` within ``context``, and how many did not.

    ``error`` raises ``TooLong`` on the first prompt that does not fit, naming both
    numbers; every other mode skips it. A prompt is the whole input and the task's
    answer is checked against it, so it is never cut.
    """
    if context is None:
        return examples, prompts, 0
    kept = [i for i, p in enumerate(prompts) if len(p) + max_new_tokens <= context]
    if len(kept) == len(prompts):
        return examples, prompts, 0
    if truncation == "error":
        bad = next(i for i, p in enumerate(prompts) if len(p) + max_new_tokens > context)
        raise prompt_error(examples[bad], len(prompts[bad]), max_new_tokens, context, setting)
    return [examples[i] for i in kept], [prompts[i] for i in kept], len(prompts) - len(kept)
