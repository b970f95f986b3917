"""The answer checkers: what each one accepts, rejects and extracts."""

from __future__ import annotations

import threading

import pytest

from posttrain.errors import ConfigError
from posttrain.tasks.verifiers import VERIFIERS, Verifier, get_verifier


def test_registry_names_match_config_choices() -> None:
    import typing

    from posttrain.config import DataConfig

    choices = set(typing.get_args(typing.get_type_hints(DataConfig)["verifier"]))
    assert set(VERIFIERS) == {"exact", "last_number", "math_verify", "choice"} == choices - {"auto"}
    for name, verifier in VERIFIERS.items():
        assert isinstance(verifier, Verifier)
        assert verifier.name == name


@pytest.mark.parametrize(
    ("gold", "text", "expected"),
    [
        ("Paris", "Paris", 1.0),
        ("Paris", "  Paris\n", 1.0),
        (" Paris ", "Paris", 1.0),
        ("Paris", "paris", 0.0),
        ("Paris", "The answer is Paris", 0.0),
        ("70", "70.0", 0.0),
    ],
)
def test_exact_check(gold: str, text: str, expected: float) -> None:
    assert VERIFIERS["exact"].check(gold, text) == expected


def test_exact_extract_is_the_stripped_text() -> None:
    assert VERIFIERS["exact"].extract("  Paris\n") == "Paris"


@pytest.mark.parametrize(
    ("gold", "text", "expected"),
    [
        ("70", "so the total is 70", 1.0),
        ("70", "70.0", 1.0),
        ("70.0", "70", 1.0),
        ("70", "The answer is 70.", 1.0),
        ("-5", "x = -5", 1.0),
        ("-5", "(-5)", 1.0),
        ("5", "12-5", 1.0),  # a minus after an operand is subtraction, not a sign
        ("-5", "12-5", 0.0),
        ("1234", "It costs 1,234 dollars", 1.0),
        ("1,234", "1234", 1.0),
        ("1234567.89", "$1,234,567.89", 1.0),
        ("0.5", ".5", 1.0),
        ("3", "first 70, then 3", 1.0),
        ("70", "first 70, then 3", 0.0),
        ("#### 72", "72", 1.0),  # gold text is read with the same rule
        ("72 apples", "I count 72", 1.0),
        ("71", "70", 0.0),
        ("70", "no number here", 0.0),
        ("no number", "70", 0.0),
    ],
)
def test_last_number_check(gold: str, text: str, expected: float) -> None:
    assert VERIFIERS["last_number"].check(gold, text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 70.", "70"),
        ("70.0", "70"),
        ("70.50", "70.5"),
        ("-0.0", "0"),
        ("x = -12", "-12"),
        ("12-5", "5"),
        ("1,234,567 people", "1234567"),
        ("1,2,3", "3"),  # not a thousands group: three numbers
        ("0.5 and .25", "0.25"),
        ("nothing", None),
        ("-", None),
    ],
)
def test_last_number_extract(text: str, expected: str | None) -> None:
    assert VERIFIERS["last_number"].extract(text) == expected


@pytest.mark.parametrize(
    ("gold", "text", "expected"),
    [
        ("\\frac{1}{2}", "0.5", 1.0),
        ("0.5", "$\\frac{1}{2}$", 1.0),
        ("1/2", "The answer is $\\boxed{\\frac{1}{2}}$", 1.0),
        ("\\frac{1}{2}", "The answer is $\\boxed{\\frac{1}{3}}$", 0.0),
        ("42", "so we get \\boxed{42}.", 1.0),
        ("42", "so we get \\boxed{41}.", 0.0),
        ("-3", "\\boxed{-3}", 1.0),
        ("\\boxed{42}", "42", 1.0),
        ("2\\sqrt{2}", "$\\boxed{2\\sqrt{2}}$", 1.0),
        ("2\\sqrt{2}", "$\\boxed{2}$", 0.0),  # bare LaTeX gold is read whole, not as "2"
        ("\\dfrac{3}{4}", "$0.75$", 1.0),
        ("\\{1,2\\}", "$\\{2, 1\\}$", 1.0),
        ("12", "I have no idea", 0.0),  # no answer: simply wrong
    ],
)
def test_math_verify_check(gold: str, text: str, expected: float) -> None:
    assert VERIFIERS["math_verify"].check(gold, text) == expected


@pytest.mark.parametrize(
    ("gold", "text"),
    [
        # an equation in the prediction is unwrapped to its right side only when the
        # gold is a plain value: the two orders disagree, so gold must come first
        ("$1$", "$2x+z=1$"),
        ("$x<2$", "$(-\\infty, 2)$"),
    ],
)
def test_math_verify_gold_comes_first(gold: str, text: str) -> None:
    check = VERIFIERS["math_verify"].check
    assert check(gold, text) == 1.0
    assert check(text, gold) == 0.0


def test_math_verify_extract() -> None:
    extract = VERIFIERS["math_verify"].extract
    assert extract("The answer is $\\boxed{\\frac{1}{2}}$") == "1/2"
    assert extract("so it is \\boxed{42}") == "42"
    assert extract("no maths at all") is None


def test_math_verify_raises_instead_of_scoring_a_failure_0(monkeypatch: pytest.MonkeyPatch) -> None:
    """An internal error or a gold answer that does not parse is unscored (the pool counts it), never 0."""
    import math_verify

    check = VERIFIERS["math_verify"].check
    with pytest.raises(ValueError, match="does not parse as mathematics"):
        check("", "42")

    def broken(*args: object, **kwargs: object) -> bool:
        raise RuntimeError("sympy blew up")

    monkeypatch.setattr(math_verify, "verify", broken)
    with pytest.raises(RuntimeError, match="sympy blew up"):
        check("1", "1")


def test_math_verify_works_outside_the_main_thread() -> None:
    # math_verify's default timeout uses signal.alarm, which fails in other threads
    results: list[float] = []
    thread = threading.Thread(target=lambda: results.append(VERIFIERS["math_verify"].check("\\frac{1}{2}", "0.5")))
    thread.start()
    thread.join()
    assert results == [1.0]


def test_get_verifier() -> None:
    assert get_verifier("math_verify") is VERIFIERS["math_verify"]


def test_get_verifier_unknown_names_the_config_field() -> None:
    with pytest.raises(ConfigError) as info:
        get_verifier("last_numbr")
    assert info.value.field == "data.verifier"
    assert str(info.value) == (
        "data.verifier: unknown verifier 'last_numbr' (expected one of choice, exact, last_number, math_verify); "
        "did you mean 'last_number'?"
    )
