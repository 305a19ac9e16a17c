"""Data pipeline: validation of every line with file:line errors, tokenization statistics, packing, collation, batches."""

import json
import random

import pytest
import torch

from fmlab.cli import main
from fmlab.data.chat_template import IGNORE
from fmlab.data.dataset import DatasetStats, TokenizedDataset, TokenizedSample, tokenize_dataset
from fmlab.data.packing import Batches, collate, concat, pack, packing_efficiency, segment_ids
from fmlab.data.validate import DataError, DataWarning, Sample, read_messages

U = {"role": "user", "content": "Hi"}
A = {"role": "assistant", "content": "Hello"}
S = {"role": "system", "content": "Be kind."}


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


# --- reading and validation ------------------------------------------------------------------------


def test_reads_both_formats_mixed_system_and_skips_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [[U, A], "", {"messages": [S, U, A], "tools": [{"name": "t"}]}, "  "])
    samples = read_messages(path)
    assert [s.line for s in samples] == [1, 3]
    assert samples[1].tools == [{"name": "t"}] and samples[1].messages[0] == S
    assert samples[0].where == f"{path}:1"


BAD_LINES = [
    ("{not json", "invalid JSON"),
    ('"just a string"', "expected a list of messages"),
    ([], "messages: empty"),
    ([U, {"role": "bot", "content": "x"}], "messages[1].role: unknown role 'bot'"),
    ([U, {"content": "x"}], "messages[1].role: missing"),
    ([U, {"role": "assistant"}], "messages[1].content: missing"),
    ([U, {"role": "assistant", "content": "  "}], "messages[1].content: empty"),
    ([U, {"role": "assistant", "content": 5}], "messages[1].content: must be a string, got int"),
    ([U, {"role": "assistant", "content": None}], "messages[1].content: null"),
    ([U, S, A], "messages[1].role: system is only allowed as the first message"),
    ([U, U, A], "messages[1].role: user follows user"),
    ([U, A, A], "messages[2].role: assistant follows assistant"),
    ([A], "messages[0].role: the conversation must start with user"),
    ([S, U], "messages[1].role: a training sample must end with assistant, got user"),
    ([U, A, {"role": "tool", "content": "r"}, A], "messages[2].role: a tool result must follow"),
    ([{**S, "tool_calls": []}, U, A], "messages[0].tool_calls: only assistant"),
    ([U, {"role": "assistant", "content": "x<turn_end>"}], "messages[1].content: contains <turn_start>/<turn_end>"),
    ("42", "expected a list of messages or an object"),
    ({"messages": [U, A], "response_format": {"type": "text"}}, "response_format: must be"),
    ({"messages": [U, A], "tools": "t"}, "tools: must be a list of objects"),
]


def test_sample_prompt_drops_only_a_final_assistant_turn():
    assert Sample([S, U, A]).prompt == [S, U]
    assert Sample([U, A, U]).prompt == [U, A, U]  # a prompt sample is already a prompt
    multi = Sample([U, A, U, A])
    assert multi.prompt == [U, A, U] and multi.messages == [U, A, U, A]  # the sample is untouched


def test_every_error_is_reported_with_file_line_and_field(tmp_path):
    rows = [[U, A]] + [row for row, _ in BAD_LINES]  # line 1 is valid, the bad ones follow
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as err:
        read_messages(path)
    errors = err.value.errors
    for line, (_, expected) in enumerate(BAD_LINES, start=2):
        assert any(e.startswith(f"{path}:{line}: ") and expected in e for e in errors), (line, expected, errors)
    assert len(errors) == len(BAD_LINES)  # one problem per bad line, none for the good line
    assert f"{path}:4: messages: empty" in str(err.value)


def test_prompt_mode_wants_a_user_turn_last(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [[S, U], [U, A]])
    with pytest.raises(DataError) as err:
        read_messages(path, mode="prompt")
    assert err.value.errors == [f"{path}:2: messages[1].role: a prompt must end with user (or tool), got assistant"]


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(DataError, match="empty file"):
        read_messages(write_jsonl(tmp_path / "e.jsonl", [""]))
    with pytest.raises(DataError, match="no such file"):
        read_messages(tmp_path / "missing.jsonl")


def test_unknown_keys_and_apple_first_key_are_warnings(tmp_path):
    path = write_jsonl(tmp_path / "w.jsonl", [{"messages": [U, {**A, "weight": 1}], "id": 7}, {"conversation": [U, A]}])
    with pytest.warns(DataWarning) as caught:
        samples = read_messages(path)
    texts = [str(w.message) for w in caught]
    assert f"{path}:1: unknown key 'id' ignored" in texts
    assert f"{path}:1: messages[1]: unknown key 'weight' ignored" in texts
    assert any(t.startswith(f"{path}:2: no 'messages' key") for t in texts)
    assert len(samples) == 2 and samples[1].messages == [U, A]


def test_sample_response_format_goes_to_the_last_user_message(tmp_path):
    fmt = {"type": "json_schema", "json_schema": {"name": "N", "schema": {"type": "object"}}}
    path = write_jsonl(tmp_path / "f.jsonl", [{"messages": [U, A, U, A], "response_format": fmt}])
    messages = read_messages(path)[0].messages
    assert "response_format" not in messages[0] and messages[2]["response_format"] == fmt


# --- tokenization and stats ----------------------------------------------------------------------------


def test_tokenize_dataset_report(tiny_tokenizer):
    long_answer = {"role": "assistant", "content": "the king " * 40}
    samples = [
        Sample([U, A], source="f", line=1),
        Sample([S, U, long_answer], source="f", line=2),
        Sample([U], source="f", line=3),
    ]
    data = tokenize_dataset(tiny_tokenizer, samples, max_len=60)
    stats = data.stats
    assert (stats.num_samples, stats.num_with_system) == (3, 1)
    assert stats.turns == {"user": 3, "assistant": 2, "system": 1}
    assert stats.lengths[1] > 60 and stats.over_max == ["f:2"]
    assert [len(s.input_ids) for s in data.samples] == [stats.lengths[0], 60, stats.lengths[2]]
    assert all(label == IGNORE for label in data.samples[2].label_ids)  # a prompt trains nothing
    trained = sum(label != IGNORE for s in data.samples for label in s.label_ids)
    assert stats.trained_tokens == trained and stats.total_tokens == sum(len(s.input_ids) for s in data.samples)
    assert 0 < stats.trained_fraction < 1
    assert "longer than max length 60: 1" in stats.text()
    with pytest.raises(DataError, match="f:2: .* tokens, longer than max length 60"):
        tokenize_dataset(tiny_tokenizer, samples, max_len=60, reject_long=True)


# --- packing ------------------------------------------------------------------------------------------


def test_greedy_is_apples_rule():
    # 3 + 3 < 10 share a pack; 6 + 4 >= 10 flushes (Apple's `>=`), so 4 starts a new one.
    assert pack([3, 3, 4], 10, "greedy") == [[0, 1], [2]]
    assert pack([3, 3, 4], 10, "best-fit") == [[0, 1, 2]]  # best fit may fill a row exactly
    assert pack([5, 9, 5], 10, "greedy") == [[0], [1], [2]]
    assert pack([5, 9, 5], 10, "best-fit") == [[0, 2], [1]]


@pytest.mark.parametrize("strategy", ["greedy", "best-fit"])
def test_packs_never_exceed_max_and_keep_every_sample(strategy):
    rng = random.Random(1)
    lengths = [rng.randint(1, 250) for _ in range(500)] + [450]  # one too long: truncated, not dropped
    with pytest.warns(UserWarning, match="1 sample"):
        packs = pack(lengths, 256, strategy)
    assert sorted(i for p in packs for i in p) == list(range(len(lengths)))
    assert all(sum(min(lengths[i], 256) for i in p) <= 256 for p in packs)
    assert [p[0] for p in packs] == sorted(p[0] for p in packs)


def test_best_fit_is_at_least_as_efficient_as_greedy():
    for seed in range(5):
        rng = random.Random(seed)
        lengths = [min(int(rng.lognormvariate(4.5, 0.8)) + 5, 1024) for _ in range(400)]
        effs = {s: packing_efficiency(lengths, pack(lengths, 1024, s), 1024) for s in ("greedy", "best-fit")}
        assert effs["best-fit"] >= effs["greedy"] and effs["best-fit"] > 0.9


# --- collation and batches --------------------------------------------------------------------------


def test_segment_ids_of_a_packed_row():
    row, _ = concat([([1, 7, 8], [7, 8, IGNORE]), ([1, 9], [9, IGNORE]), ([1, 5, 6], [5, 6, IGNORE])])
    batch = collate([(row, [0] * len(row))], pad_id=0, eos_id=1, fixed_len=10)
    assert batch["segment_ids"].tolist() == [[2, 2, 2, 3, 3, 4, 4, 4, 0, 0]]
    assert segment_ids(torch.tensor([[0, 1, 5, 1, 6]]), 0, 1).tolist() == [[0, 2, 2, 3, 3]]


def test_collate_right_and_left():
    samples = [([1, 5, 6], [5, 6, IGNORE]), ([1, 7], [7, IGNORE])]
    right = collate(samples, pad_id=0, eos_id=1)
    assert right["input_ids"].tolist() == [[1, 5, 6], [1, 7, 0]]
    assert right["label_ids"].tolist() == [[5, 6, IGNORE], [7, IGNORE, IGNORE]]
    assert right["segment_ids"].tolist() == [[2, 2, 2], [2, 2, 0]]
    left = collate(samples, pad_id=0, eos_id=1, side="left", fixed_len=4)
    assert left["input_ids"].tolist() == [[0, 1, 5, 6], [0, 0, 1, 7]]
    assert left["label_ids"][1].tolist() == [IGNORE, IGNORE, 7, IGNORE]
    assert all(t.dtype == torch.long for t in left.values())
    assert collate(samples, 0, 1, fixed_len=2)["input_ids"].tolist() == [[1, 5], [1, 7]]  # truncates too


def test_batches_are_deterministic_and_cover_every_token(tiny_tokenizer):
    rng = random.Random(0)
    words = "the king queen enter exit scene".split()
    samples = [
        Sample(
            [
                {"role": "user", "content": " ".join(rng.choices(words, k=rng.randint(1, 9)))},
                {"role": "assistant", "content": " ".join(rng.choices(words, k=rng.randint(1, 30)))},
            ]
        )
        for _ in range(40)
    ]
    data = tokenize_dataset(tiny_tokenizer, samples, max_len=128)
    packed = Batches(data, batch_size=4, pack=True, shuffle_seed=3)
    first = [b["input_ids"] for b in packed.epoch(0)]
    assert all(torch.equal(a, b["input_ids"]) for a, b in zip(first, packed.epoch(0)))
    assert not all(torch.equal(a, b["input_ids"]) for a, b in zip(first, packed.epoch(1)))
    assert len(first) == len(packed) and all(b.shape[1] == 128 for b in first)
    real = sum(len(s.input_ids) for s in data.samples)
    assert sum(int((b != data.pad_id).sum()) for b in first) == real
    assert sum(int((b == data.eos_id).sum()) for b in first) == len(samples)  # one segment per sample
    plain = list(Batches(data, batch_size=8))
    assert len(plain) == 5 and plain[0]["input_ids"].shape[1] == max(len(s.input_ids) for s in data.samples[:8])
    fixed = list(Batches(data, batch_size=16, fixed=True, drop_last=True))
    assert len(fixed) == 2 and all(b["input_ids"].shape == (16, 128) for b in fixed)


# --- CLI --------------------------------------------------------------------------------------------


def test_cli_validate_data(tmp_path, tiny_tokenizer, capsys):
    good = write_jsonl(tmp_path / "good.jsonl", [[U, A], [S, U, A]])
    bad = write_jsonl(tmp_path / "bad.jsonl", [[U, A], [U, U]])
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "tokenizer.model").write_bytes(open(tiny_tokenizer.source, "rb").read())
    assert main(["validate-data", str(good), "--assets", str(assets), "--max-sequence-length", "20"]) == 0
    out = capsys.readouterr().out
    assert "samples: 2 (1 with a system turn)" in out and "tokens per sample" in out and "max length 20: 2" in out
    assert main(["validate-data", str(good), str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:2: messages[1].role: user follows user" in err and "Traceback" not in err
    assert main(["validate-data", str(good), "--assets", str(tmp_path / "nope")]) == 1


def test_batches_grouped_by_length_pad_less_and_keep_every_sample():
    rng = random.Random(0)
    lengths = [rng.randint(2, 60) for _ in range(203)]  # 203 = 25 batches of 8 + a short one
    samples = [TokenizedSample([1] + [5] * (n - 1), [IGNORE] * n, f"s{i}") for i, n in enumerate(lengths)]
    data = TokenizedDataset(samples, DatasetStats(len(samples), 0, {}), pad_id=0, eos_id=1)

    def run(group, epoch, drop_last=False):
        return list(Batches(data, 8, shuffle_seed=4, group_by_length=group, drop_last=drop_last).epoch(epoch))

    plain, grouped = run(False, 0), run(True, 0)
    assert sum(b["input_ids"].numel() for b in grouped) < 0.7 * sum(b["input_ids"].numel() for b in plain)
    # every sample once, the short batch last, the same order for the same epoch, another for the next
    sizes = [len(b["input_ids"]) for b in grouped]
    assert sizes == [8] * 25 + [3] and sum(int((b["segment_ids"] > 0).sum()) for b in grouped) == sum(lengths)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(grouped, run(True, 0)))
    assert [b["input_ids"].shape[1] for b in run(True, 1)] != [b["input_ids"].shape[1] for b in grouped]
    assert [len(b["input_ids"]) for b in run(True, 0, drop_last=True)] == [8] * 25
    # fixed-width rows are not grouped: there is no padding to save
    assert Batches(data, 8, fixed=True, max_len=64, group_by_length=True).group_by_length is False


def test_batches_truncate_samples_before_packing(tiny_tokenizer):
    samples = [Sample([U, {"role": "assistant", "content": "the king " * n}]) for n in (30, 2, 3)]
    data = tokenize_dataset(tiny_tokenizer, samples)  # no max_len here: the batches set it
    with pytest.warns(UserWarning, match="truncated"):
        batch = next(iter(Batches(data, batch_size=4, pack=True, max_len=72)))
    # The long sample fills its own row; the short ones keep all their tokens in the other row.
    assert batch["input_ids"].shape == (2, 72) and int((batch["input_ids"] == data.eos_id).sum()) == 3
    short = sum(len(s.input_ids) for s in data.samples[1:])
    assert sorted(int((row != data.pad_id).sum()) for row in batch["input_ids"]) == sorted([72, short])


def test_tokenize_errors_name_the_sample(tiny_tokenizer):
    bad = Sample(
        [
            U,
            {"role": "assistant", "content": "x", "tool_calls": [{"name": "f", "arguments": {}}]},
            {"role": "tool", "content": {"r": "<turn_end>"}},
            A,
        ],
        source="t.jsonl",
        line=9,
    )
    with pytest.raises(DataError, match="t.jsonl:9: message content contains"):
        tokenize_dataset(tiny_tokenizer, [bad])
