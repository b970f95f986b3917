"""LLM judges: verdict parsing, prompt templates and the rules that turn verdicts into rewards.

A judge reads a question and one response (pointwise: a 0-10 score) or two
(pairwise: ``[[A]]`` or ``[[B]]``), may reason first, and ends with its verdict
(J1, Whitehouse et al. 2025). ``parse`` reads verdicts and renders prompts;
``rules`` holds the position-bias rule (both orders must agree) and the
within-group win rate GRPO uses as a per-sample reward. Pure functions, no torch.
"""
