"""Data loading: all three formats, bad images counted not fatal, resumable distinct sampling."""

import pytest

from r1vfree_mcore.data.dataset import PROMPT_SUFFIX, PromptDataset, build_messages
from r1vfree_mcore.data.sampler import ResumableSampler
from r1vfree_mcore.testing.synthetic_data import write_synthetic_dataset


@pytest.mark.parametrize("fmt", ["disk", "parquet", "jsonl"])
def test_formats_load_same_records(tmp_path, fmt):
    path = write_synthetic_dataset(tmp_path / fmt, 5, fmt, seed=3)
    ds = PromptDataset(path)
    assert ds.format == fmt and len(ds) == 5
    s = ds.get(2)
    assert s.image.mode == "RGB" and s.problem and s.image_path == "images/000002.png"
    ref = PromptDataset(write_synthetic_dataset(tmp_path / "ref", 5, "disk", seed=3))
    assert s.problem == ref.get(2).problem
    assert s.image.tobytes() == ref.get(2).image.tobytes()


def test_bad_images_are_counted_and_skipped(tmp_path, caplog):
    path = write_synthetic_dataset(
        tmp_path / "j", 6, "jsonl", bad_images={1: "truncated", 2: "missing", 3: "grayscale", 4: "rgba"}
    )
    ds = PromptDataset(path)
    got = [ds.get(i) for i in range(6)]
    assert got[1] is None and got[2] is None
    assert got[3].image.mode == "RGB" and got[4].image.mode == "RGB"
    assert ds.stats.images_skipped == 2 and ds.stats.skipped_indices == [1, 2]
    assert ds.stats.images_converted == 2
    assert "000002.png" in caplog.text and "skipped record 1" in caplog.text


def test_bad_sources_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.path"):
        PromptDataset(tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "a", "image_path": "x.png"}\n{not json}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        PromptDataset(bad)


def test_prompt_template_is_the_original():
    msgs = build_messages("What is it?")
    assert msgs[0]["content"][0] == {"type": "image"}
    assert msgs[0]["content"][1]["text"] == "What is it?" + PROMPT_SUFFIX
    assert "<think> </think>" in PROMPT_SUFFIX and "<answer> </answer>" in PROMPT_SUFFIX


def test_sampler_distinct_per_rank_and_resumable():
    ranks = [ResumableSampler(10, seed=1, dp_rank=r, dp_size=2) for r in range(2)]
    first = [[s.next_index() for _ in range(5)] for s in ranks]
    assert not set(first[0]) & set(first[1])
    assert sorted(first[0] + first[1]) == list(range(10))
    s = ResumableSampler(10, seed=1)
    [s.next_index() for _ in range(13)]  # into the second epoch
    state = s.state_dict()
    expected = [s.next_index() for _ in range(4)]
    t = ResumableSampler(10, seed=1)
    t.load_state_dict(state)
    assert [t.next_index() for _ in range(4)] == expected
    with pytest.raises(ValueError, match="seed"):
        ResumableSampler(10, seed=2).load_state_dict(state)


def test_sampler_skips_unusable():
    s = ResumableSampler(6, seed=0, shuffle=False)
    got = s.next_valid(3, lambda i: None if i % 2 else i)
    assert got == [0, 2, 4]
    with pytest.raises(RuntimeError, match="usable"):
        ResumableSampler(4, seed=0).next_valid(1, lambda i: None)
