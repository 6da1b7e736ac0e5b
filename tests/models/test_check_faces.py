"""The export's check faces read a .bin through common.safe_pickle: as data only, and without importing evaluate
(which sits downstream of models)."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_SCRIPT = """
import os, pickle, sys
from pathlib import Path
from models.check_faces import read_faces
from common.safe_pickle import UnsafePickleError

folder = Path(sys.argv[1])
images = [b"jpeg-%d" % i for i in range(4)]
with open(folder / "pairs.bin", "wb") as f:
    pickle.dump((images, [True, False]), f, protocol=2)
faces = read_faces(folder / "pairs.bin")
assert faces.encoded == tuple(images), faces.encoded
assert "4 images of" in faces.source, faces.source

class Evil:
    def __reduce__(self):
        return os.system, ("touch " + str(folder / "pwned"),)

with open(folder / "evil.bin", "wb") as f:
    pickle.dump(([Evil()], [True]), f, protocol=2)
try:
    read_faces(folder / "evil.bin")
except UnsafePickleError as error:
    assert "evil.bin" in str(error) and "system" in str(error), error
else:
    raise AssertionError("the evil pickle was loaded")
assert not (folder / "pwned").exists()
assert not any(name == "evaluate" or name.startswith("evaluate.") for name in sys.modules), "evaluate imported"
"""


def test_a_bin_is_read_as_data_without_importing_evaluate(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
