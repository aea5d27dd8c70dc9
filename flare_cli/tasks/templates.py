"""English prompt templates, shared by the target stream and the pivot stream (method.md).

The target-language fields and the English pivot fields fill the same English template, so the
template tail ("Answer:") lines up when prompts are aligned from the end. The answer follows the
prompt after one space.
"""

QA_TEMPLATE = "Context: {context}\nQuestion: {question}\nAnswer:"
NLI_TEMPLATE = (
    "Premise: {premise}\nHypothesis: {hypothesis}\n"
    "Does the premise entail the hypothesis? Answer entailment, neutral or contradiction.\nAnswer:"
)
SENTIMENT_TEMPLATE = "Text: {text}\nIs the sentiment negative, neutral or positive?\nAnswer:"

NLI_LABELS = ("entailment", "neutral", "contradiction")
SENTIMENT_LABELS = ("negative", "neutral", "positive")

# One space between prompt and answer; the answer ends with the tokenizer's EOS.
ANSWER_PREFIX = " "

# Every template ends with this tail; the body is everything before it.
ANSWER_TAIL = "\nAnswer:"
# Input-level fusion puts the English prompt body, a blank line, then the target prompt body in one
# sequence, and ends with the shared tail: the answer position sees both versions of the input.
INPUT_FUSION_SEPARATOR = "\n\n"


def template_body(template: str) -> str:
    """The template without its ``ANSWER_TAIL``."""
    if not template.endswith(ANSWER_TAIL):
        raise ValueError(f"prompt template must end with {ANSWER_TAIL!r}: {template!r}")
    return template[: -len(ANSWER_TAIL)]
