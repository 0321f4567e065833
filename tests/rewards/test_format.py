"""format_reward / extract_answer: original R1V-Free semantics and edge cases."""

from r1vfree_mcore.rewards.format import extract_answer, format_reward


def test_format_reward_cases():
    cases = {
        "<think>a</think><answer>b</answer>": 1.0,
        "<think>multi\nline</think>\n\n <answer>x\ny</answer>": 1.0,
        "<think></think><answer></answer>": 1.0,
        " <think>a</think><answer>b</answer>": 0.0,  # fullmatch: nothing before
        "<think>a</think><answer>b</answer> trailing": 0.0,
        "<think>a</think>text<answer>b</answer>": 0.0,  # only whitespace between
        "<answer>b</answer>": 0.0,
        "<think>a</think>": 0.0,
        "": 0.0,
        "<think>a</think><answer>b</answer><answer>c</answer>": 1.0,  # .*? may span to the last tag
    }
    assert format_reward(list(cases)) == list(cases.values())
    assert format_reward([]) == []


def test_extract_answer_cases():
    assert extract_answer("<think>x</think><answer> yes </answer>") == "yes"
    assert extract_answer("<answer>first</answer><answer>second</answer>") == "first"
    assert extract_answer("<answer>a\nb</answer>") == "a\nb"
    assert extract_answer("<answer></answer>") == ""
    assert extract_answer("no tags") == "I don't know."
    assert extract_answer("<answer>unclosed") == "I don't know."
    assert extract_answer("") == "I don't know."
