"""What a confirmation phrase must never be mistaken for, synthesized on the device with espeak-ng.

Used only by `guard enroll`: from the phrase's text it makes partial phrases,
sound-alike swaps of each word (one phoneme changed), other word orders and
sentences sharing a word, in several synthetic voices, speeds and pitches,
plus the exact phrase in a cohort of synthetic voices for the speaker check.
Everything is synthetic speech; nothing of the user's audio passes through here.
"""

import functools
import re
import subprocess
from dataclasses import dataclass

import numpy as np

from guard.dsp import StreamResampler
from guard.errors import UsageError

ESPEAK = "espeak-ng"
ESPEAK_RATE_HZ = 22050
MIN_SYLLABLES = 4
MAX_WORDS = 10
# Voices whose content (not speaker) the calibration confusables are spoken in.
CALIBRATION_VOICES = (("en-us", 150, 45), ("en", 170, 55), ("en-gb-x-rp+m1", 140, 40), ("en-us+f2", 165, 60))
# Synthetic speakers the user's voice is compared against: several accents, tracts and sexes.
COHORT_VOICES = ("en", "en-gb-x-rp+m1", "en+f2", "en-029+m3", "en-gb-scotland+f4", "en+klatt", "en-us+m7",
                 "en-us+f1", "en+m6", "en-gb-x-gbclan+f5", "en-us+klatt3", "en+m4")
# One phoneme swapped for a neighbour of another place or vowel: how one word is misheard as another.
SOUND_ALIKE = {"p": "t", "t": "k", "k": "p", "b": "d", "d": "g", "g": "b", "f": "T", "T": "f", "v": "D", "D": "v",
               "s": "S", "S": "s", "z": "v", "m": "n", "n": "m", "l": "w", "r": "w", "w": "r", "j": "w",
               "tS": "t", "dZ": "d", "i:": "aI", "I": "E", "E": "eI", "a": "V", "aI": "oU", "eI": "i:",
               "aU": "OI", "oU": "aU", "O:": "u:", "u:": "oU", "U": "V", "V": "a", "0": "aU", "A@": "O:",
               "O@": "A:", "3:": "e@", "@": "i:", "A:": "eI"}
CARRIERS = ("I think {} is fine for today", "we talked about {} yesterday", "{} was all she said")
VOWELS = re.compile(r"(aI|aU|eI|oU|OI|A@|O@|e@|i@|U@|[aeiouAEIOUV03@])[:]?")
PHONEME = re.compile(r"[',]|tS|dZ|aI|aU|eI|oU|OI|A@|O@|e@|i@|U@|i:|u:|O:|A:|3:|[a-zA-Z@0-9]")


class PhraseError(UsageError):
    """A confirmation phrase too short or too common to be safe."""


@functools.cache
def espeak_repeatable() -> tuple[str, ...]:
    """The option that makes espeak-ng say the same text the same way every time: 1.52 (Debian 13) adds random
    breath noise to some voices unless given -D, which 1.51 (Debian 12) does not know and does not need."""
    try:
        told = subprocess.run([ESPEAK, "--help"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return ("-D",) if re.search(r"^-D\s", told, re.MULTILINE) else ()


def _espeak(args: list[str], text: str) -> bytes:
    try:
        return subprocess.run([ESPEAK, *espeak_repeatable(), *args, text], check=True, capture_output=True,
                              timeout=30).stdout
    except FileNotFoundError:
        raise UsageError(f"{ESPEAK} not found: enrolment synthesizes what the phrase must never be mistaken "
                         "for; install it: sudo apt-get install espeak-ng") from None
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        raise UsageError(f"{ESPEAK} failed on {text!r}: {e}") from None


def phonemes(text: str) -> list[str]:
    """espeak-ng's phoneme spelling of each word of `text`."""
    return [re.sub(r"[',%=_:]*$", "", w) for w in _espeak(["-q", "-x"], text).decode().split()]


def syllables(text: str) -> int:
    return sum(len(VOWELS.findall(word)) for word in phonemes(text))


def speak(text: str, voice: str, speed_wpm: int = 160, pitch: int = 50) -> np.ndarray:
    """Synthesize `text` (or `[[phonemes]]`); returns 16 kHz mono int16."""
    wav = _espeak(["-v", voice, "-s", str(speed_wpm), "-p", str(pitch), "--stdout"], text)
    data = np.frombuffer(wav[44:], "<i2").astype(np.float32)  # espeak-ng writes a plain 44-byte header
    resampler = StreamResampler(ESPEAK_RATE_HZ)
    out = np.concatenate([resampler.process(data), resampler.flush()])
    return np.clip(np.round(out), -32768, 32767).astype(np.int16)


def words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z']+", text)


def check_phrase(text: str) -> str:
    """The phrase, tidied; PhraseError when it is too short or too long to be a safe confirmation."""
    said = words(text)
    if not said:
        raise PhraseError("give the phrase's words: --phrase \"okay then, send my request\"")
    if len(said) > MAX_WORDS:
        raise PhraseError(f"{text!r} has {len(said)} words; choose one of {MAX_WORDS} words or fewer")
    count = syllables(" ".join(said))
    if count < MIN_SYLLABLES:
        raise PhraseError(f"{text!r} has {count} syllable(s): short words like it turn up in ordinary talk; "
                          f"choose a phrase of at least {MIN_SYLLABLES} syllables that you would not say "
                          "otherwise, such as \"okay then, send my request\"")
    return " ".join(text.split())


def _sound_alikes(word_phonemes: str) -> list[str]:
    """The word with one phoneme changed, at its first and last changeable places."""
    parts = PHONEME.findall(word_phonemes)
    places = [i for i, p in enumerate(parts) if p in SOUND_ALIKE]
    out = []
    for i in dict.fromkeys(places[:1] + places[-1:]):
        changed = parts[:i] + [SOUND_ALIKE[parts[i]]] + parts[i + 1:]
        out.append("".join(changed))
    return out


@dataclass(frozen=True)
class Confusable:
    """One text the phrase must not be confused with, and what kind it is."""

    kind: str  # partial, sound-alike, reordered, shared-word
    text: str


def confusables(phrase: str) -> list[Confusable]:
    """Partial phrases, one-phoneme sound-alikes of each word, reorderings and sentences sharing a word."""
    said = [w.lower() for w in words(phrase)]
    sounds = phonemes(" ".join(said))
    n = len(said)
    out = [Confusable("partial", " ".join(said[i:j])) for i in range(n) for j in range(i + 1, n + 1)
           if (i, j) != (0, n)]
    if len(sounds) == n:
        for i in range(n):
            for alike in _sound_alikes(sounds[i]):
                spelled = sounds[:i] + [alike] + sounds[i + 1:]
                out.append(Confusable("sound-alike", "[[" + " ".join(spelled) + "]]"))
    if n > 1:
        out.append(Confusable("reordered", " ".join(reversed(said))))
        out += [Confusable("reordered", " ".join(said[:i] + [said[i + 1], said[i]] + said[i + 2:]))
                for i in range(n - 1)]
    out += [Confusable("shared-word", carrier.format(w)) for w in dict.fromkeys(said) for carrier in CARRIERS[:1]]
    return list({c.text: c for c in out}.values())
