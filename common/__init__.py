"""The parts every package shares: expected-failure errors and the one-line reporting of them, atomic file
writes and the output-folder lock, and pickles from outside read as data only.

Upstream of every other package (convert, pipeline, models, distill, evaluate and bench import it; configs,
a leaf, needs none of it); it imports none of them, and not torch.

Modules:
- errors.py: InputError, the base of every expected failure, and run_command, which reports one as one line.
- files.py: atomic writes, file checksums, and the lock that makes one job the only writer of an output folder.
- safe_pickle.py: pickles from outside read as data only (a restricted unpickler), and insightface's .bin pair sets
  decoded with it, for models (the export's check faces) and evaluate.
"""
