"""The built-in demo corpus: built for real (small size) and read back with the corpus
readers the rest of the system uses."""

from __future__ import annotations

import collections
import csv
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ctal_ds.data.corpora import read_corpus
from ctal_ds.data.demo.espeak import ESpeak, VoiceSettings
from ctal_ds.data.demo.mosei import round_thirds
from ctal_ds.data.demo.sentences import SentenceGenerator, librispeech_transcript
from ctal_ds.data.demo.speakers import ACCENTS, FEMALE_VARIANTS, MALE_VARIANTS
from ctal_ds.data.demo_corpus import (
    INCOMPLETE_MARKER,
    build_demo_corpus,
    plan_demo_corpus,
)

REPO = Path(__file__).resolve().parents[2]


def file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "corpus.json"
    }


def summary_without_build(root: Path) -> dict:
    summary = json.loads((root / "corpus.json").read_text())
    summary.pop("build")
    return summary


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "corpus"
    build_demo_corpus(out, size="small", seed=0, workers=2, progress=False)
    return out


@pytest.fixture(scope="module")
def scans(corpus):
    return {k: read_corpus(corpus / k, probe_audio=True) for k in ("librispeech", "iemocap", "mosei")}


# --------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_files_with_one_or_two_workers(corpus, tmp_path):
    again = tmp_path / "again"
    build_demo_corpus(again, size="small", seed=0, workers=1, progress=False)
    first, second = file_hashes(corpus), file_hashes(again)
    assert len(first) > 100
    assert first == second
    assert summary_without_build(corpus) == summary_without_build(again)


def test_another_seed_gives_other_sentences_voices_and_labels():
    a, b = plan_demo_corpus("small", seed=0), plan_demo_corpus("small", seed=1)
    texts_a = [u.text for u in a.utterances()]
    texts_b = [u.text for u in b.utterances()]
    assert len(texts_a) == len(texts_b)
    assert sum(x != y for x, y in zip(texts_a, texts_b)) > 0.8 * len(texts_a)
    assert [s.speaker for s in a.librispeech.speakers] != [s.speaker for s in b.librispeech.speakers]
    assert [c.label for c in a.mosei] != [c.label for c in b.mosei]


def test_espeak_output_depends_only_on_text_settings_and_seed():
    engine = ESpeak()
    breathy = VoiceSettings("en-us+f5", rate=170, pitch=55, range=60, volume=100)
    klatt = VoiceSettings("en+edward", rate=200, pitch=40, range=30, volume=120)
    first = engine.synthesize("The boat is in the harbour.", breathy, seed=7)
    engine.synthesize("Something else, spoken in between.", klatt, seed=3)
    second = engine.synthesize("The boat is in the harbour.", breathy, seed=7)
    assert engine.sample_rate == 22050
    assert first.dtype == np.int16 and len(first) > engine.sample_rate // 2
    assert np.array_equal(first, second)


def test_refuses_to_synthesise_when_other_code_holds_the_library():
    """A library that stays loaded keeps its state between utterances: no determinism."""
    import _ctypes
    import ctypes

    import espeakng_loader

    held = ctypes.CDLL(espeakng_loader.get_library_path())
    try:
        with pytest.raises(RuntimeError, match="already loaded"):
            ESpeak()
    finally:
        _ctypes.dlclose(held._handle)
    assert ESpeak().sample_rate == 22050


def test_every_catalogued_voice_exists_in_the_espeak_data():
    import espeakng_loader

    variants = Path(espeakng_loader.get_data_path()) / "voices" / "!v"
    missing = [v for v in FEMALE_VARIANTS + MALE_VARIANTS if not (variants / v).is_file()]
    assert missing == []
    engine = ESpeak()
    for accent in ACCENTS:  # an unknown language is an error, not a silent fallback
        audio = engine.synthesize("Hello.", VoiceSettings(f"{accent}+m1", 175, 50, 50, 100), 0)
        assert audio.size > 0
    with pytest.raises(ValueError, match="no voice"):
        engine.synthesize("Hello.", VoiceSettings("xx-nowhere", 175, 50, 50, 100), 0)


# --------------------------------------------------------------------------- layouts


def test_every_audio_file_has_a_transcript_and_every_transcript_its_audio(corpus, scans):
    for layout, ext in (("librispeech", ".flac"), ("iemocap", ".wav"), ("mosei", ".wav")):
        scan = scans[layout]
        on_disk = {str(p) for p in (corpus / layout).rglob(f"*{ext}")}
        referenced = {r.audio for r in scan.records}
        if layout == "iemocap":
            dropped = list(scan.rejections)
            assert {r.reason.split(":")[0] for r in dropped} == {"excluded label"}
            referenced |= {
                str(corpus / "iemocap" / f"Session{r.id[4]}" / "sentences" / "wav"
                    / r.id.rsplit("_", 1)[0] / f"{r.id}.wav")
                for r in dropped
            }
        else:
            assert scan.rejections == [], scan.summary()
        assert referenced == on_disk
        assert all(r.text.strip() for r in scan.records)


def test_librispeech_transcripts_are_upper_case_words(scans):
    for r in scans["librispeech"].records:
        assert re.fullmatch(r"[A-Z']+( [A-Z']+)*", r.text), r.text
        assert re.fullmatch(r"\d+-\d+-\d{4}", r.id)


def test_iemocap_times_match_the_audio_durations(corpus):
    for path in sorted((corpus / "iemocap").glob("Session*/dialog/EmoEvaluation/*.txt")):
        lines = path.read_text().splitlines()
        assert lines[0] == "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]"
        session_dir = path.parents[2]
        previous_end = 0.0
        for line in lines:
            m = re.match(r"^\[(\d+\.\d{4}) - (\d+\.\d{4})\]\t(\S+)\t(\S+)\t\[[\d.]+, [\d.]+, [\d.]+\]$", line)
            if not m:
                assert line == "" or re.match(r"^[CA]-E\d:\t", line) or line.startswith("%"), line
                continue
            start, end, utt = float(m.group(1)), float(m.group(2)), m.group(3)
            wav = session_dir / "sentences" / "wav" / path.stem / f"{utt}.wav"
            assert end - start == pytest.approx(sf.info(str(wav)).duration, abs=2e-4)
            assert start > previous_end
            previous_end = end


# --------------------------------------------------------------------------- speakers


def test_speaker_counts_and_speaker_disjoint_librispeech_subsets(corpus, scans):
    ls = collections.defaultdict(set)
    for r in scans["librispeech"].records:
        ls[r.split].add(r.speaker)
    assert {k: len(v) for k, v in ls.items()} == {"train-clean": 6, "test-clean": 3, "train-other": 2}
    assert not ls["train-clean"] & ls["test-clean"]
    assert not ls["train-other"] & (ls["train-clean"] | ls["test-clean"])
    # SPEAKERS.TXT lists every speaker with the gender of its voice.
    genders = {r.speaker: r.labels.get("gender") for r in scans["librispeech"].records}
    assert set(genders.values()) <= {"F", "M"} and None not in genders.values()

    iemocap = {(r.labels["session"], r.speaker) for r in scans["iemocap"].records}
    assert {s for s, _ in iemocap} == {1, 2, 3, 4, 5}
    assert {spk for _, spk in iemocap} == {f"Ses0{s}_{g}" for s in range(1, 6) for g in "FM"}
    assert len({r.speaker for r in scans["mosei"].records}) == 5  # one per video


def test_default_size_has_many_distinct_speakers_with_distinct_voices():
    plan = plan_demo_corpus("default", seed=0)
    train = [s.speaker for s in plan.librispeech.speakers if s.subset == "train-clean"]
    test = [s.speaker for s in plan.librispeech.speakers if s.subset == "test-clean"]
    other = [s.speaker for s in plan.librispeech.speakers if s.subset == "train-other"]
    assert len(train) >= 40 and len(test) >= 10 and len(other) >= 150
    assert not {s.label for s in train} & {s.label for s in test}
    everyone = train + test + other + list(plan.iemocap.speakers.values())
    voices = [(s.accent, s.variant) for s in everyone]
    assert len(set(voices)) == len(voices)
    assert {s.gender for s in everyone} == {"F", "M"}
    assert {s.gender for s in other} == {"F", "M"}
    # Baselines differ per speaker, not just the voice.
    assert len({(s.pitch, s.range, s.rate) for s in other}) > 0.9 * len(other)


# --------------------------------------------------------------------------- labels


def test_emotion_labels_cover_four_classes_in_every_session_plus_dropped_ones(corpus, scans):
    raw = collections.Counter()
    for path in (corpus / "iemocap").glob("Session*/dialog/EmoEvaluation/*.txt"):
        raw.update(line.split("\t")[2] for line in path.read_text().splitlines() if line.startswith("["))
    assert set(raw) == {"ang", "hap", "exc", "neu", "sad", "fru", "xxx"}
    kept = scans["iemocap"].records
    assert len(kept) == sum(raw.values()) - raw["fru"] - raw["xxx"]
    assert collections.Counter(r.labels["emotion"] for r in kept)["hap"] == raw["hap"] + raw["exc"]
    for session in range(1, 6):
        assert {r.labels["emotion"] for r in kept if r.labels["session"] == session} == {
            "ang", "hap", "neu", "sad"}


def test_sentiment_labels_in_range_with_both_signs_and_all_splits(corpus, scans):
    records = scans["mosei"].records
    labels = np.array([r.labels["sentiment"] for r in records])
    assert np.all((labels >= -3) & (labels <= 3))
    assert (labels > 0).any() and (labels < 0).any()
    assert all(round_thirds(x) == x for x in labels)
    assert {r.split for r in records} == {"train", "valid", "test"}
    # A video (speaker) is in one split only.
    splits_per_video = collections.defaultdict(set)
    for r in records:
        splits_per_video[r.speaker].add(r.split)
    assert all(len(s) == 1 for s in splits_per_video.values())
    with (corpus / "mosei" / "label.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["video_id", "clip_id", "text", "label", "label_T", "label_A",
                             "label_V", "annotation", "mode"]
    for row in rows:
        label = float(row["label"])
        assert row["annotation"] == ("Positive" if label > 0 else "Negative" if label < 0 else "Neutral")


def test_sentiment_needs_both_words_and_voice():
    clips = plan_demo_corpus("default", seed=0).mosei
    label = np.array([c.label for c in clips])
    words = np.array([c.label_text for c in clips])
    voice = np.array([c.label_audio for c in clips])
    for part in (words, voice):
        r = np.corrcoef(label, part)[0, 1]
        assert 0.3 < r < 0.9, r
    # Sentences neutral in their words still get non-zero scores from the voice.
    assert np.count_nonzero(label[words == 0]) > 50


def test_emotion_words_give_valence_but_not_the_class():
    turns = plan_demo_corpus("default", seed=0).iemocap.turns
    emotions_of_text = collections.defaultdict(set)
    for t in turns:
        emotions_of_text[t.utterance.text].add(t.emotion)
    assert sum({"ang", "sad"} <= e for e in emotions_of_text.values()) >= 3
    assert sum({"hap", "exc"} <= e for e in emotions_of_text.values()) >= 1
    # Small talk is said in every mood.
    assert sum({"ang", "hap", "neu", "sad"} <= e for e in emotions_of_text.values()) >= 1


def test_emotion_is_not_separable_by_loudness_alone(scans):
    """Angry and sad lines share a loudness band; their speaking rate tells them apart."""
    rms, rate = collections.defaultdict(list), collections.defaultdict(list)
    for r in scans["iemocap"].records:
        audio, sr = sf.read(r.audio)
        rms[r.labels["emotion"]].append(np.sqrt(np.mean(audio**2)))
        rate[r.labels["emotion"]].append(len(r.text.split()) / (len(audio) / sr))
    ang, sad = np.array(rms["ang"]), np.array(rms["sad"])
    assert ang.min() < sad.max() and sad.min() < ang.max()  # the loudness ranges overlap
    assert np.mean(rate["sad"]) < np.mean(rate["neu"]) < np.mean(rate["ang"])


# --------------------------------------------------------------------------- audio


def test_audio_is_16k_mono_pcm16_speech_with_short_silences(corpus):
    files = sorted(corpus.rglob("*.flac")) + sorted(corpus.rglob("*.wav"))
    assert len(files) == 104
    for path in files:
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16"), path
        assert info.format == ("FLAC" if path.suffix == ".flac" else "WAV")
        audio, _ = sf.read(str(path))
        assert np.isfinite(audio).all()
        assert 0.5 < len(audio) / 16000 < 8.0, path
        peak = np.abs(audio).max()
        assert peak > 0.1, path
        active = np.flatnonzero(np.abs(audio) > 0.02 * peak)
        assert active[0] / 16000 < 0.12 and (len(audio) - active[-1]) / 16000 < 0.12, path


# --------------------------------------------------------------------------- sentences


def test_sentences_are_varied_and_agree_in_number():
    gen = SentenceGenerator(np.random.default_rng(0))
    sentences = [gen.neutral().text for _ in range(1500)] + [gen.opinion().text for _ in range(1500)]
    assert len(set(sentences)) > 2700
    wrong = re.compile(
        r"\b(?:(?:he|she) (?:are|were|have|do)|(?:I|you|we|they) (?:is|has|does)"
        r"|there is (?:two|three|four|five|six|seven|eight|ten|twelve)|there are one)\b",
        re.IGNORECASE,
    )
    assert [s for s in sentences if wrong.search(s)] == []
    assert any(re.search(r"\b(?:he|she) \w+s the\b", s, re.IGNORECASE) for s in sentences)
    assert librispeech_transcript("Well, it's done - isn't it?") == "WELL IT'S DONE ISN'T IT"


def test_opinion_polarity_follows_lexicon_and_negation():
    gen = SentenceGenerator(np.random.default_rng(1))
    opinions = [gen.opinion(sign=s) for s in (1, -1) for _ in range(300)]
    assert all(-3 <= o.polarity <= 3 for o in opinions)
    positive, negative = opinions[:300], opinions[300:]
    assert np.mean([o.polarity > 0 for o in positive]) > 0.95
    assert np.mean([o.polarity < 0 for o in negative]) > 0.95
    negated = [abs(o.polarity) for o in opinions if " not " in o.text]
    plain = [abs(o.polarity) for o in opinions if " not " not in o.text]
    assert len(negated) > 30
    # "not terrible" is only mildly positive: negation damps as well as flips.
    assert np.mean(negated) < 0.6 * np.mean(plain)


# --------------------------------------------------------------------------- rebuilds


def test_cli_builds_then_skips_a_complete_corpus_then_rebuilds_with_force(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, str(REPO / "launch" / "make_demo_corpus.py"), "--out", str(out),
           "--small", "--workers", "2", "--quiet"]
    first = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "104 utterances" in first.stdout
    assert "train-other 2 speakers / 8 utterances" in first.stdout
    stamp = (out / "corpus.json").stat().st_mtime_ns
    again = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "already holds a complete demo corpus" in again.stdout
    assert (out / "corpus.json").stat().st_mtime_ns == stamp
    subprocess.run(cmd + ["--force"], capture_output=True, text=True, check=True)
    assert (out / "corpus.json").stat().st_mtime_ns != stamp
    assert not (out / INCOMPLETE_MARKER).exists()


def test_refuses_to_replace_layout_folders_it_did_not_write(tmp_path):
    foreign = tmp_path / "librispeech" / "keep.txt"
    foreign.parent.mkdir()
    foreign.write_text("not ours")
    with pytest.raises(FileExistsError, match="librispeech"):
        build_demo_corpus(tmp_path, size="small", progress=False)
    assert foreign.read_text() == "not ours"


def test_an_interrupted_build_is_replaced(tmp_path):
    (tmp_path / INCOMPLETE_MARKER).write_text("")
    leftover = tmp_path / "mosei" / "wav" / "stale.wav"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a file")
    summary = build_demo_corpus(tmp_path, size="small", workers=2, progress=False)
    assert not leftover.exists()
    assert summary["utterances"] == 104 and (tmp_path / "corpus.json").is_file()


# --------------------------------------------------------------------------- pre-training data

# sha256 over the plans of seed 0, default size, as they were before train-other
# existed: adding it must not change a line, label or voice of the other layouts.
IEMOCAP_TURNS_SHA256 = "fb792d1ba34eccc40c4845322a855812d311c17532bd2fda1ec1ec4a3a43318b"
IEMOCAP_SPEAKERS_SHA256 = "40d59d68ffdd707599c8d48a52792ae0159b3705e9872822494776be04aa8cb6"
MOSEI_CLIPS_SHA256 = "480889a9f18aa3d6f0cc735eb589f75d539ac47be6bbbd632d23001212ab7275"
LS_CLEAN_SPEAKERS_SHA256 = "17aa75d771a14926a2ec3ddeac0863d2508a86cbae50d0cdf431be76700666db"


def sha256_of_repr(value) -> str:
    return hashlib.sha256(repr(value).encode()).hexdigest()


@pytest.fixture(scope="module")
def default_plan():
    return plan_demo_corpus("default", seed=0)


def baseline_deviations(plan) -> dict[str, np.ndarray]:
    """Per utterance (pitch - baseline, range - baseline, rate / baseline), by subset."""
    speakers = {s.speaker.label: s.speaker for s in plan.librispeech.speakers}
    out = collections.defaultdict(list)

    def add(key, speaker, v):
        out[key].append((v.pitch - speaker.pitch, v.range - speaker.range, v.rate / speaker.rate))

    for u in plan.librispeech.utterances:
        add(u.chapter_dir.split("/")[1], speakers[u.utt_id.split("-")[0]], u.utterance.settings)
    for t in plan.iemocap.turns:
        add("iemocap", plan.iemocap.speakers[f"Ses0{t.session}_{t.gender}"], t.utterance.settings)
    return {k: np.array(v) for k, v in out.items()}


def test_iemocap_and_mosei_plans_are_unchanged_by_train_other(default_plan):
    assert sha256_of_repr(default_plan.iemocap.turns) == IEMOCAP_TURNS_SHA256
    assert sha256_of_repr(sorted(default_plan.iemocap.speakers.items())) == IEMOCAP_SPEAKERS_SHA256
    assert sha256_of_repr(default_plan.mosei) == MOSEI_CLIPS_SHA256
    clean = [(s.speaker, s.subset) for s in default_plan.librispeech.speakers if s.subset != "train-other"]
    assert sha256_of_repr(clean) == LS_CLEAN_SPEAKERS_SHA256


def test_train_other_speakers_are_disjoint_from_every_other_speaker(default_plan):
    ls = default_plan.librispeech.speakers
    other = [s.speaker for s in ls if s.subset == "train-other"]
    rest = ([s.speaker for s in ls if s.subset != "train-other"]
            + list(default_plan.iemocap.speakers.values()))
    rest_voices = {(s.accent, s.variant) for s in rest}
    mosei_voices = {u.settings.voice for u in (c.utterance for c in default_plan.mosei)}
    assert len({s.label for s in other}) == len(other)
    assert not {s.label for s in other} & {s.label for s in rest}
    assert not {(s.accent, s.variant) for s in other} & rest_voices
    assert not {s.voice for s in other} & mosei_voices
    assert len({s.name for s in ls}) == len(ls)
    chapters = collections.defaultdict(set)
    for u in default_plan.librispeech.utterances:
        chapters[u.chapter_dir.split("/")[-1]].add(u.chapter_dir)
    assert all(len(dirs) == 1 for dirs in chapters.values())


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_the_speaker_pool_never_runs_out(seed):
    plan = plan_demo_corpus("default", seed=seed)
    voices = [s.speaker.voice for s in plan.librispeech.speakers]
    voices += [s.voice for s in plan.iemocap.speakers.values()]
    voices += list({c.video_id: c.utterance.settings.voice for c in plan.mosei}.values())
    assert len(voices) == len(set(voices)) == 310
    assert len(voices) < len(ACCENTS) * (len(FEMALE_VARIANTS) + len(MALE_VARIANTS))


def test_pretraining_data_outnumbers_each_labelled_set_tenfold(default_plan):
    by_subset = collections.Counter(u.chapter_dir.split("/")[1] for u in default_plan.librispeech.utterances)
    assert 900 <= by_subset["train-clean"] <= 1000  # the speaker-verification training set
    pretrain = by_subset["train-clean"] + by_subset["train-other"]
    for labelled in (len(default_plan.iemocap.turns), len(default_plan.mosei), by_subset["train-clean"]):
        assert pretrain >= 10 * labelled


def test_train_other_prosody_spans_the_downstream_range(default_plan):
    dev = baseline_deviations(default_plan)
    other, clean, emotion = dev["train-other"], dev["train-clean"], dev["iemocap"]
    assert np.all(other.std(axis=0) > 3 * clean.std(axis=0))
    # Pitch, range and rate of the emotion set lie within what pre-training hears.
    low, high = np.percentile(other, [1, 99], axis=0)
    assert np.all(low <= np.percentile(emotion, 10, axis=0))
    assert np.all(high >= np.percentile(emotion, 90, axis=0))


def test_expressive_reading_follows_the_words_and_sometimes_the_voice():
    from ctal_ds.data.demo import prosody
    from ctal_ds.data.demo.speakers import Speaker

    speaker = Speaker("1", "F", "en", "f1", pitch=50, range=50, rate=170)
    rng = np.random.default_rng(0)
    # Emotional lines are acted in their own emotion.
    for emotion in prosody.EMOTION_STYLES:
        assert prosody.expressive_reading(speaker, rng, 0.0, emotion).emotion == emotion
    # An opinion's valence follows its polarity: positive words, higher and livelier.
    polarities = rng.uniform(-3, 3, size=2000)
    readings = [prosody.expressive_reading(speaker, rng, float(p)) for p in polarities]
    valences = np.array([r.valence for r in readings])
    assert np.corrcoef(polarities, valences)[0, 1] > 0.8
    pitch = np.array([r.settings.pitch for r in readings])
    assert pitch[valences > 0.5].mean() > pitch[valences < -0.5].mean() + 5
    # Neutral lines: mostly calm, a fifth in a style of the voice's own.
    neutral = [prosody.expressive_reading(speaker, rng) for _ in range(4000)]
    calm = sum(r.emotion is None and r.valence is None for r in neutral)
    assert 0.75 < calm / len(neutral) < 0.85
    assert {r.emotion for r in neutral if r.emotion} == set(prosody.EMOTION_STYLES)


def test_small_corpus_has_unlabelled_train_other_read_like_the_other_subsets(corpus, scans):
    summary = json.loads((corpus / "corpus.json").read_text())
    subsets = summary["layouts"]["librispeech"]["subsets"]
    assert {k: v["utterances"] for k, v in subsets.items()} == {
        "train-clean": 24, "test-clean": 12, "train-other": 8}
    other = [r for r in scans["librispeech"].records if r.split == "train-other"]
    assert len(other) == 8
    clean = next(r for r in scans["librispeech"].records if r.split == "train-clean")
    assert all(set(r.labels) == set(clean.labels) for r in other)
    rows = (corpus / "librispeech" / "SPEAKERS.TXT").read_text().splitlines()
    assert sum("| train-other" in row for row in rows) == 2


def test_review_lines_agree_in_sentiment_so_context_tells_good_from_bad():
    from ctal_ds.data.demo.sentences import POLAR_ADJECTIVES, SentenceGenerator

    gen = SentenceGenerator(np.random.default_rng(0))
    for _ in range(300):
        line = gen.review()
        words = line.text.lower().replace(",", " ").replace(".", " ").split()
        signs = {np.sign(POLAR_ADJECTIVES[w]) for w in words if w in POLAR_ADJECTIVES}
        assert len(signs) == 1 and np.sign(line.polarity) in signs, line
