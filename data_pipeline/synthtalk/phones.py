"""SynthTalk's phone inventory, its visemes, and random utterances.

A clip's speech is a sequence of phones (vowels a e i o u, fricatives f s, plosives p b t k,
nasals m n, and silence), grouped into syllables, words and phrases with pauses between phrases.
Each phone has a mouth target ``(jaw_open, lip_width, lip_round)``; the mouth track is those
targets smoothed by a critically damped filter (see ``motion.py``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

PHONES = ("sil", "a", "e", "i", "o", "u", "f", "s", "p", "b", "t", "k", "m", "n")
PHONE_ID = {p: i for i, p in enumerate(PHONES)}
SILENCE = PHONE_ID["sil"]
VOWELS = tuple(PHONE_ID[p] for p in "aeiou")
CONSONANTS = tuple(PHONE_ID[p] for p in "fsptkbmn")
BILABIALS = tuple(PHONE_ID[p] for p in "pbm")
PLOSIVES = tuple(PHONE_ID[p] for p in "pbtk")
FRICATIVES = tuple(PHONE_ID[p] for p in "fs")
NASALS = tuple(PHONE_ID[p] for p in "mn")

# Mouth targets per phone: (jaw_open, lip_width, lip_round), each nominally in [0, 1].
# Bilabials aim below zero (lips pressed together) so the smoothed track reaches a true closure
# within the phone; the ground-truth track is clipped to [0, 1] afterwards.
VISEME_TARGETS = np.array(
    [
        (0.00, 0.45, 0.15),  # sil: lips together at rest
        (0.90, 0.55, 0.10),  # a: open, neutral
        (0.50, 0.85, 0.00),  # e: half-open, spread
        (0.32, 1.00, 0.00),  # i: half-open, spread wide
        (0.72, 0.30, 0.80),  # o: open, rounded
        (0.18, 0.10, 1.00),  # u: near-closed, rounded
        (0.10, 0.60, 0.00),  # f: lower lip to the upper teeth
        (0.14, 0.75, 0.00),  # s: teeth close, spread
        (-0.30, 0.45, 0.10),  # p: closed
        (-0.30, 0.45, 0.10),  # b: closed
        (0.26, 0.60, 0.00),  # t
        (0.36, 0.50, 0.10),  # k
        (-0.30, 0.45, 0.10),  # m: closed
        (0.20, 0.55, 0.00),  # n
    ],
    dtype=np.float64,
)

# Duration ranges in seconds (the spec asks for 60-200 ms phones).
_VOWEL_DUR = (0.09, 0.20)
_STRESSED_VOWEL_DUR = (0.13, 0.20)
_CONSONANT_DUR = {"f": (0.07, 0.14), "s": (0.08, 0.16), "p": (0.08, 0.13), "b": (0.08, 0.13),
                  "t": (0.06, 0.11), "k": (0.07, 0.12), "m": (0.08, 0.14), "n": (0.06, 0.12)}
_PHRASE_PAUSE = (0.20, 0.60)


@dataclasses.dataclass(frozen=True)
class Utterance:
    """A timed phone sequence covering ``[0, duration)`` seconds.

    Attributes:
      phones: (P,) int phone ids (indices into ``PHONES``).
      starts: (P,) float start times in seconds; ``starts[0] == 0``.
      durations: (P,) float durations in seconds; segments tile the timeline.
      stressed: (P,) bool, True on the first phone of a stressed syllable (nod onsets).
      phrase: (P,) int phrase index of each phone (-1 for pauses); drives the pitch declination.
    """

    phones: np.ndarray
    starts: np.ndarray
    durations: np.ndarray
    stressed: np.ndarray
    phrase: np.ndarray

    @property
    def ends(self) -> np.ndarray:
        return self.starts + self.durations

    def phone_at(self, times: np.ndarray) -> np.ndarray:
        """Phone id sounding at each time in ``times`` (seconds); (N,) -> (N,)."""
        idx = np.searchsorted(self.starts, times, side="right") - 1
        idx = np.clip(idx, 0, len(self.phones) - 1)
        return self.phones[idx]


def _syllable(rng: np.random.Generator, stressed: bool) -> list[tuple[str, float]]:
    """One (C)V(C) syllable as (phone, duration) pairs."""
    out = []
    if rng.random() < 0.8:
        c = "fsptkbmn"[rng.integers(8)]
        out.append((c, rng.uniform(*_CONSONANT_DUR[c])))
    v = "aeiou"[rng.integers(5)]
    out.append((v, rng.uniform(*(_STRESSED_VOWEL_DUR if stressed else _VOWEL_DUR))))
    if rng.random() < 0.3:
        c = "fsptkmn"[rng.integers(7)]
        out.append((c, rng.uniform(*_CONSONANT_DUR[c])))
    return out


def sample_utterance(rng: np.random.Generator, duration: float) -> Utterance:
    """Random phrases of words of syllables, separated by pauses, covering ``duration`` seconds.

    The clip may start mid-phrase (as cropped real footage does): the utterance is generated from
    a random negative time and cut at 0.
    """
    t = -rng.uniform(0.0, 1.0)
    phones, starts, durs, stressed, phrase = [], [], [], [], []

    def add(p: str, d: float, s: bool, ph: int):
        phones.append(PHONE_ID[p])
        starts.append(t)
        durs.append(d)
        stressed.append(s)
        phrase.append(ph)

    phrase_idx = 0
    if rng.random() < 0.5:  # leading pause
        d = rng.uniform(*_PHRASE_PAUSE)
        add("sil", d, False, -1)
        t += d
    while t < duration:
        for _ in range(rng.integers(2, 6)):  # words per phrase
            n_syl = rng.integers(1, 4)
            stress_at = 0 if rng.random() < 0.7 or n_syl == 1 else 1
            for s in range(n_syl):
                for j, (p, d) in enumerate(_syllable(rng, s == stress_at)):
                    add(p, d, s == stress_at and j == 0, phrase_idx)
                    t += d
        d = rng.uniform(*_PHRASE_PAUSE)
        add("sil", d, False, -1)
        t += d
        phrase_idx += 1

    starts_a = np.asarray(starts)
    durs_a = np.asarray(durs)
    ends = starts_a + durs_a
    keep = ends > 0.0
    # A syllable cut by the clip start has no visible onset: it cannot carry a nod.
    stressed_a = np.asarray(stressed, bool) & (starts_a >= 0.0)
    starts_a, durs_a = starts_a[keep], durs_a[keep]
    durs_a = durs_a - np.maximum(0.0, -starts_a)
    starts_a = np.maximum(starts_a, 0.0)
    return Utterance(
        phones=np.asarray(phones, np.int32)[keep],
        starts=starts_a,
        durations=durs_a,
        stressed=stressed_a[keep],
        phrase=np.asarray(phrase, np.int32)[keep],
    )
