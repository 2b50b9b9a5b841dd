import subprocess
import sys

SPEAK = """
import hashlib, sys
from phonelm.espeak import synthesize
for text in ["Why did the farmer paint the bridge?", "Anna found three keys."]:
    wav, sr = synthesize(text, seed=int(sys.argv[1]))  # the breathy default voice, en-us+f3
    print(sr, wav.shape[0], hashlib.sha1(wav.numpy().tobytes()).hexdigest())
"""


def speak(seed: int) -> list[str]:
    cmd = [sys.executable, "-c", SPEAK, str(seed)]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()


def test_same_calls_give_the_same_audio_in_a_fresh_process():
    first = speak(0)
    assert len(first) == 2 and first[0] != first[1]
    assert speak(0) == first  # unseeded, the breath noise differed on every run
    other = speak(1)
    assert [line.split()[2] for line in other] != [line.split()[2] for line in first]
