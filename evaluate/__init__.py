"""Evaluation: verification sets (.bin, CVLFace arrow), IJB-B/C 1:1 and 1:N, TinyFace; CLI in evaluate.cli.

Modules: verification (sets, image pass and insightface's metric), ijb (template scores, TAR@FAR),
ijb_1n, ijb_data, ijb_run, face_align, tinyface, ranking, embed (image pass through
pipeline.decode_images), checkpoint (backbone from a checkpoint), targets, report, safe_pickle,
arrow_dataset. Importing this package imports none of them (the training loop picks what it needs).
"""
