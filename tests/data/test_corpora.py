"""Corpus readers on tiny corpora written on the fly, good and bad inputs alike."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ctal_ds.data.corpora import (
    CorpusError,
    detect_kind,
    filter_split,
    read_corpus,
    read_iemocap,
    read_jsonl,
    read_librispeech,
    read_mosei,
)


def write_audio(path: Path, seconds: float = 0.3, sr: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, 0.3 * np.sin(2 * np.pi * 220 * t), sr)
    return path


def reasons(scan) -> dict[str, str]:
    """rejected id (or source) -> reason class"""
    return {(r.id or r.source): r.reason.split(":")[0] for r in scan.rejections}


def assert_accounted(scan, inputs: int) -> None:
    assert len(scan.records) + len(scan.rejections) == scan.inputs == inputs, scan.summary()


# --------------------------------------------------------------------------- LibriSpeech


def make_librispeech(root: Path) -> None:
    ch = root / "train-clean-100" / "19" / "198"
    for utt in range(4):
        write_audio(ch / f"19-198-{utt:04d}.flac")
    (ch / "19-198.trans.txt").write_text(
        "19-198-0000 NORTHANGER ABBEY\n"
        "19-198-0001 THIS LITTLE WORK\n"
        "19-198-0002    \n"  # empty transcript
        "garbage line without an id\n"  # malformed
        "19-198-0005 NO AUDIO FOR THIS ONE\n"  # missing audio
        "19-198-0000 DUPLICATE OF THE FIRST\n"  # duplicate
    )
    # 19-198-0003.flac has no transcript line.
    write_audio(root / "dev-clean" / "84" / "121" / "84-121-0000.flac")
    (root / "dev-clean" / "84" / "121" / "84-121.trans.txt").write_text("84-121-0000 HELLO THERE\n")
    empty = root / "dev-clean" / "84" / "121" / "84-121-0001.flac"
    empty.write_bytes(b"")
    with (root / "dev-clean" / "84" / "121" / "84-121.trans.txt").open("a") as f:
        f.write("84-121-0001 AN EMPTY FILE\n")
    (root / "SPEAKERS.TXT").write_text(
        "; ID  |SEX| SUBSET           |MINUTES| NAME\n"
        "19   | F | train-clean-100  | 25.19 | Kara Shallenberg\n"
        "84   | F | dev-clean        |  8.02 | Christie Nowak\n"
        "this is not a speaker line\n"
    )


def test_librispeech_reads_records_with_subset_and_gender(tmp_path):
    make_librispeech(tmp_path)
    scan = read_librispeech(tmp_path)
    records = {r.id: r for r in scan.records}
    assert set(records) == {"19-198-0000", "19-198-0001", "84-121-0000"}
    first = records["19-198-0000"]
    assert first.text == "NORTHANGER ABBEY"
    assert first.speaker == "19" and first.split == "train-clean-100"
    assert first.labels == {"gender": "F"}
    assert Path(first.audio).name == "19-198-0000.flac"
    assert records["84-121-0000"].split == "dev-clean"
    assert scan.warnings and "not a speaker line" in scan.warnings[0]


def test_librispeech_rejects_every_bad_input_with_a_reason(tmp_path):
    make_librispeech(tmp_path)
    scan = read_librispeech(tmp_path)
    got = reasons(scan)
    assert got["19-198-0002"] == "empty transcript"
    assert got["19-198-0005"] == "missing audio"
    assert got["19-198-0003"] == "missing transcript"
    assert got["84-121-0001"] == "empty audio"
    assert any(r.reason.startswith("duplicate id") for r in scan.rejections)
    malformed = [r for r in scan.rejections if r.reason.startswith("malformed line")]
    assert len(malformed) == 1 and malformed[0].source.endswith("19-198.trans.txt:4")
    # Chapter 19-198 names 5 utterances (0000-0003 and 0005) and has one malformed and
    # one duplicate line; chapter 84-121 names 2.
    assert_accounted(scan, inputs=7 + 2)


def test_librispeech_unreadable_transcript_reports_file_and_its_audio(tmp_path):
    ch = tmp_path / "train" / "7" / "8"
    write_audio(ch / "7-8-0000.flac")
    (ch / "7-8.trans.txt").write_bytes(b"7-8-0000 \xff\xfe BAD BYTES\n")
    scan = read_librispeech(tmp_path)
    got = reasons(scan)
    assert got[str(ch / "7-8.trans.txt")] == "unreadable file"
    assert got["7-8-0000"] == "missing transcript"
    assert not scan.records


def test_librispeech_probe_rejects_unreadable_audio(tmp_path):
    ch = tmp_path / "train" / "7" / "8"
    write_audio(ch / "7-8-0000.flac")
    (ch / "7-8-0001.flac").write_bytes(b"not audio at all" * 10)
    (ch / "7-8.trans.txt").write_text("7-8-0000 GOOD\n7-8-0001 BROKEN\n")
    assert len(read_librispeech(tmp_path).records) == 2  # stat only
    scan = read_librispeech(tmp_path, probe_audio=True)
    assert [r.id for r in scan.records] == ["7-8-0000"]
    assert reasons(scan)["7-8-0001"] == "unreadable audio"
    assert_accounted(scan, inputs=2)


def test_librispeech_accepts_a_single_subset_folder(tmp_path):
    ch = tmp_path / "test-clean" / "5" / "6"
    write_audio(ch / "5-6-0000.flac")
    (ch / "5-6.trans.txt").write_text("5-6-0000 ONE\n")
    scan = read_librispeech(tmp_path / "test-clean")
    assert [(r.id, r.split) for r in scan.records] == [("5-6-0000", "test-clean")]


# --------------------------------------------------------------------------- IEMOCAP


def make_iemocap(root: Path) -> None:
    rows = [  # (utt id, label, text or None for no transcript line, write wav)
        ("Ses01F_impro01_F000", "neu", "Excuse me.", True),
        ("Ses01F_impro01_M000", "exc", "Do you have your forms?", True),
        ("Ses01F_impro01_F001", "fru", "Yeah.", True),
        ("Ses01F_impro01_M001", "sad", "", True),
        ("Ses01F_impro01_F002", "ang", "Where is it?", False),
        ("Ses01F_impro01_M002", "hap", None, True),
        ("Ses01F_impro01_F003", "xxx", "Hmm.", True),
    ]
    dialog = root / "Session1" / "dialog"
    evaluation = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
    transcript = []
    for i, (utt, label, text, wav) in enumerate(rows):
        evaluation += [
            f"[{i}.0000 - {i}.5000]\t{utt}\t{label}\t[2.5000, 2.5000, 2.5000]",
            f"C-E1:\t{label.capitalize()};\t()",
            "",
        ]
        if text is not None:
            transcript.append(f"{utt} [{i:03d}.0000-{i:03d}.5000]: {text}")
        if wav:
            write_audio(root / "Session1" / "sentences" / "wav" / "Ses01F_impro01" / f"{utt}.wav")
    evaluation.append("[9.0 - 9.5]\tbroken line without vad")
    # A transcript-only utterance (the release has such lines) and an audio-only one.
    transcript.append("Ses01F_impro01_MXX0 [010.0000-010.5000]: Overlapping.")
    write_audio(root / "Session1" / "sentences" / "wav" / "Ses01F_impro01" / "Ses01F_impro01_F009.wav")
    (dialog / "EmoEvaluation").mkdir(parents=True)
    (dialog / "transcriptions").mkdir(parents=True)
    (dialog / "EmoEvaluation" / "Ses01F_impro01.txt").write_text("\n".join(evaluation) + "\n")
    (dialog / "EmoEvaluation" / "._Ses01F_impro01.txt").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (dialog / "EmoEvaluation" / "Categorical").mkdir()
    (dialog / "EmoEvaluation" / "Categorical" / "Ses01F_impro01_e1_cat.txt").write_text("x :Neutral; ()\n")
    (dialog / "transcriptions" / "Ses01F_impro01.txt").write_text("\n".join(transcript) + "\n")
    # Session 2: one clean utterance so folds exist.
    d2 = root / "Session2" / "dialog"
    (d2 / "EmoEvaluation").mkdir(parents=True)
    (d2 / "transcriptions").mkdir(parents=True)
    (d2 / "EmoEvaluation" / "Ses02M_script01_1.txt").write_text(
        "[1.0 - 2.0]\tSes02M_script01_1_M000\tang\t[1.0, 4.0, 4.0]\n"
    )
    (d2 / "transcriptions" / "Ses02M_script01_1.txt").write_text(
        "Ses02M_script01_1_M000 [001.0000-002.0000]: Get out.\n"
    )
    write_audio(root / "Session2" / "sentences" / "wav" / "Ses02M_script01_1" / "Ses02M_script01_1_M000.wav")


def test_iemocap_four_classes_with_excited_merged_into_happy(tmp_path):
    make_iemocap(tmp_path)
    scan = read_iemocap(tmp_path)
    records = {r.id: r for r in scan.records}
    assert set(records) == {"Ses01F_impro01_F000", "Ses01F_impro01_M000", "Ses02M_script01_1_M000"}
    assert records["Ses01F_impro01_M000"].labels["emotion"] == "hap"
    assert records["Ses01F_impro01_M000"].labels["raw_emotion"] == "exc"
    assert records["Ses01F_impro01_M000"].speaker == "Ses01_M"
    assert records["Ses01F_impro01_F000"].speaker == "Ses01_F"
    assert records["Ses01F_impro01_F000"].text == "Excuse me."
    s2 = records["Ses02M_script01_1_M000"]
    assert (s2.split, s2.labels["session"], s2.labels["emotion"]) == ("Session2", 2, "ang")


def test_iemocap_rejects_every_bad_input_with_a_reason(tmp_path):
    make_iemocap(tmp_path)
    scan = read_iemocap(tmp_path)
    got = reasons(scan)
    assert got["Ses01F_impro01_F001"] == "excluded label"  # fru
    assert got["Ses01F_impro01_F003"] == "excluded label"  # xxx
    assert got["Ses01F_impro01_M001"] == "empty transcript"
    assert got["Ses01F_impro01_F002"] == "missing audio"
    assert got["Ses01F_impro01_M002"] == "missing transcript"
    assert got["Ses01F_impro01_MXX0"] == "unlabelled"
    assert got["Ses01F_impro01_F009"] == "unlabelled"
    assert sum(r.reason.startswith("malformed line") for r in scan.rejections) == 1
    # 7 evaluated + 1 transcript-only + 1 audio-only + 1 malformed in session 1; 1 in session 2.
    assert_accounted(scan, inputs=11)


# --------------------------------------------------------------------------- MOSEI

MOSEI_HEADER = "video_id,clip_id,text,label,label_T,label_A,label_V,annotation,mode"


def make_mosei(root: Path) -> None:
    lines = [
        MOSEI_HEADER,
        "abcDEF123_-,0,I really love this movie,2.6667,0,0,0,Positive,train",
        "abcDEF123_-,1,It was terrible,-2.0,0,0,0,Negative,valid",
        'xyz,3,"Well, it was fine",0.0,0,0,0,Neutral,test',
        "xyz,4,   ,1.0,0,0,0,Positive,train",  # empty transcript
        "xyz,5,Out of range,4.5,0,0,0,Positive,train",  # bad label
        "xyz,6,Not a number,abc,0,0,0,Positive,train",  # bad label
        "xyz,7,Bad mode,1.0,0,0,0,Positive,dev",  # bad mode
        "xyz,8,Missing audio,1.0,0,0,0,Positive,train",
        "xyz,9,too,few,fields",  # malformed
        "xyz,3,Duplicate,0.0,0,0,0,Neutral,test",
    ]
    (root).mkdir(parents=True, exist_ok=True)
    (root / "label.csv").write_text("\n".join(lines) + "\n")
    for video, clip in [("abcDEF123_-", 0), ("abcDEF123_-", 1), ("xyz", 3), ("xyz", 4), ("xyz", 5),
                        ("xyz", 6), ("xyz", 7), ("xyz", 99)]:
        write_audio(root / "wav" / video / f"{clip}.wav")


def test_mosei_reads_sentiment_and_splits(tmp_path):
    make_mosei(tmp_path)
    scan = read_mosei(tmp_path)
    records = {r.id: r for r in scan.records}
    assert set(records) == {"abcDEF123_-_0", "abcDEF123_-_1", "xyz_3"}
    r = records["abcDEF123_-_0"]
    assert r.labels["sentiment"] == pytest.approx(2.6667)
    assert (r.split, r.speaker, r.text) == ("train", "abcDEF123_-", "I really love this movie")
    assert records["xyz_3"].text == "Well, it was fine"
    assert records["abcDEF123_-_1"].split == "valid"


def test_mosei_rejects_every_bad_input_with_a_reason(tmp_path):
    make_mosei(tmp_path)
    scan = read_mosei(tmp_path)
    got = reasons(scan)
    assert got["xyz_4"] == "empty transcript"
    assert got["xyz_5"] == "bad label" and got["xyz_6"] == "bad label" and got["xyz_7"] == "bad label"
    assert got["xyz_8"] == "missing audio"
    assert got["xyz_99"] == "missing transcript"
    assert sum(r.reason.startswith("malformed line") for r in scan.rejections) == 1
    assert sum(r.reason.startswith("duplicate id") for r in scan.rejections) == 1
    assert_accounted(scan, inputs=10 + 1)  # 10 data rows + one wav with no row


def test_mosei_missing_column_names_file_and_column(tmp_path):
    (tmp_path / "label.csv").write_text("video_id,clip_id,text,mode\nv,0,hi,train\n")
    with pytest.raises(CorpusError, match=r"label\.csv.*\['label'\]"):
        read_mosei(tmp_path)


# --------------------------------------------------------------------------- JSONL


def test_jsonl_manifest_records_labels_and_rejections(tmp_path):
    write_audio(tmp_path / "a.wav")
    write_audio(tmp_path / "sub" / "b.wav")
    lines = [
        json.dumps({"id": "a", "audio": "a.wav", "text": " hello  world ", "speaker": "s1",
                    "split": "train", "emotion": "neu", "labels": {"sentiment": 1.5}}),
        json.dumps({"id": "b", "audio": str(tmp_path / "sub" / "b.wav"), "text": "bye"}),
        "{not json",
        json.dumps(["a", "list"]),
        json.dumps({"id": "c", "text": "no audio field"}),
        json.dumps({"id": "d", "audio": "d.wav", "text": "missing file"}),
        json.dumps({"id": "e", "audio": "a.wav", "text": "   "}),
        json.dumps({"id": "a", "audio": "a.wav", "text": "duplicate"}),
        "",
    ]
    manifest = tmp_path / "corpus.jsonl"
    manifest.write_text("\n".join(lines))
    scan = read_jsonl(manifest)
    records = {r.id: r for r in scan.records}
    assert records["a"].text == "hello world"
    assert records["a"].labels == {"sentiment": 1.5, "emotion": "neu"}
    assert records["a"].audio == str(tmp_path / "a.wav")
    assert (records["b"].speaker, records["b"].split) == ("unknown", "")
    got = reasons(scan)
    assert got["d"] == "missing audio" and got["e"] == "empty transcript"
    assert got[f"{manifest}:3"] == "malformed line" and got[f"{manifest}:4"] == "malformed line"
    assert got["c"] == "malformed line"
    assert sum(r.reason.startswith("duplicate id") for r in scan.rejections) == 1
    assert_accounted(scan, inputs=8)
    assert "8 inputs -> 2 records, 6 rejected" in scan.summary()


# --------------------------------------------------------------------------- dispatch


def test_detect_kind_and_read_corpus(tmp_path):
    make_librispeech(tmp_path / "ls")
    make_iemocap(tmp_path / "iemo")
    make_mosei(tmp_path / "mosei")
    (tmp_path / "m.jsonl").write_text("")
    assert detect_kind(tmp_path / "ls") == "librispeech"
    assert detect_kind(tmp_path / "iemo") == "iemocap"
    assert detect_kind(tmp_path / "mosei") == "mosei"
    assert detect_kind(tmp_path / "m.jsonl") == "jsonl"
    assert read_corpus(tmp_path / "iemo").corpus == "iemocap"
    with pytest.raises(CorpusError, match="sub-folders"):
        detect_kind(tmp_path)
    with pytest.raises(CorpusError, match="no such file"):
        read_corpus(tmp_path / "nope")


def test_filter_split_keeps_all_rejections(tmp_path):
    make_librispeech(tmp_path)
    scan = read_librispeech(tmp_path)
    train = filter_split(scan, ["train-clean-100"])
    assert {r.split for r in train.records} == {"train-clean-100"}
    assert train.rejections == scan.rejections
    with pytest.raises(CorpusError, match="splits present"):
        filter_split(scan, ["train-other-500"])
