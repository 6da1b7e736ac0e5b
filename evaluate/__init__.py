"""Evaluation: face verification and identification benchmarks for a backbone; `python -m evaluate`.

Modules, one job each:
- cli: `python -m evaluate` (one checkpoint) and `python -m evaluate batch` (a folder of them); the
  backbone comes from models.load_backbone (any checkpoint, run directory or bare state dict), or from
  models.onnx_net for an exported model.onnx (run in onnxruntime); it dispatches `embed | pairs | threshold`
  to own_data_cli, `audit` to audit_cli and `overlap` to overlap_cli; __main__ only calls cli.main.
- cli_args: the option value types and the model-and-run options every evaluate command shares.
- model_input: the backbone a command names (--checkpoint with --network or --config), loaded.
- output_check: where a command will write, checked before its work.
- targets: which benchmark sets exist under the data roots, and running one for a model.
- embed: the image pass, encoded images through pipeline.decode_images and the backbone with its flip.
- verification: pair sets (insightface .bin, CVLFace arrow) and insightface's 10-fold accuracy metric.
- ijb: IJB-B/C 1:1 and 1:N (a sub-package; see evaluate.ijb).
- tinyface: TinyFace identification, CMC over probes against matches plus distractors.
- ranking: rank-k and TPIR at FPIR over probe x gallery scores (IJB 1:N and TinyFace).
- readers: the sets' files read as data only (arrow folders, metadata.pt; .bin files by common.safe_pickle).
- report: the report as JSON, CSV rows and a printed table.
- overlap: the train/test identity-overlap audit, training-class centres against every test image,
  decided per test identity, and the rule for its default threshold.
- set_identities: who is who in a test set (a pair set's same-identity pairs, a set of people's labels).
- overlap_report: the audit's JSON report, its CSV of flagged identities and the exclusion list for
  `python -m convert rec|folder --exclude-classes`.
- overlap_cli: `python -m evaluate overlap --checkpoint M --shards DIR --val-data DIR --people PATH ...`.
- own_data_cli: `python -m evaluate embed | pairs | threshold`, a user's own images (cli dispatches to it).
- image_sources: any images a user holds (identity folders, a flat folder, a .rec, shards, a .bin) as one list.
- embed_images: every image of a source through the image pass into a Parquet file.
- pairs: a pair set from identity folders whose 10 folds share no identity.
- landmarks: the landmarks CSV, and 112x112 crops aligned from it by the IJB alignment.
- thresholds: the cosine threshold and TAR at each FAR of a pair set (every verification result has them).
- roc_plot: the ROC of several models on one pair set, operating points marked.
- impostor_threshold: similarity thresholds from the data's own strangers: image pairs at a stated FAR
  (conflicts, overlap), images against other classes' centres at a stated rate (outliers).
- similarity_search: every pair of unit rows above a threshold, in blocks (memory bounded in the rows).
- audit: the data audit, conflicts (one person under two labels), outliers (mislabels) and duplicates.
- audit_report: the audit's JSON, CSVs, decision files for `python -m convert` and its static HTML page.
- audit_cli: `python -m evaluate audit SHARDS ... --checkpoint M --output DIR`.

Importing this package imports none of them (the training loop picks what it needs).
"""
